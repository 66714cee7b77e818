"""Programming files (per physical array, the target level of every cell) and layout diffs."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neftc.atomic import atomic_directory
from neftc.errors import LayoutError
from neftc.flow.cost import target_pulses_per_cell
from neftc.flow.records import (
    PROGRAMMING_FORMAT,
    ArrayShape,
    LayerDac,
    ProgrammedArray,
    ProgrammingManifest,
)
from neftc.format.reader import Layout
from neftc.format.schema import LAYOUT_FILE, DacCalibrationRecord
from neftc.targets.device_model import level_conductances_us

PROGRAM_MARKER = "manifest.json"
DAC_CSV = "dac.csv"
DAC_COLUMNS = ("layer", "scale", "signed", "bits", "method", "data", "samples")


#: (core, array) -> (levels uint8 [rows, cols], programmed bool [rows, cols], layer).
ArrayLevels = dict[tuple[int, int], tuple[np.ndarray, np.ndarray, str]]


def array_levels(layout: Layout) -> ArrayLevels:
    """(core, array) -> (levels uint8 [rows, cols], programmed bool [rows, cols], layer)."""
    rows, cols = layout.doc.target.array.rows, layout.doc.target.array.cols
    arrays = {}
    for layer in layout.doc.layers:
        for tile in layer.tiles:
            levels = np.zeros((rows, cols), dtype=np.uint8)
            programmed = np.zeros((rows, cols), dtype=bool)
            levels[:tile.row_count, :tile.col_count] = layout.tile_levels(layer, tile)
            programmed[:tile.row_count, :tile.col_count] = True
            for core, array in [(tile.core, tile.array), *tile.replicas]:
                arrays[(core, array)] = (levels, programmed, layer.name)
    return dict(sorted(arrays.items()))


def _layer_dacs(layout: Layout) -> tuple[DacCalibrationRecord | None, list[LayerDac]]:
    """The layout's DAC calibration and every layer's setting; (None, []) unless all layers
    carry one."""
    calibration = layout.doc.dac_calibration
    dacs = [(name, layout.dac(name)) for name in layout.layer_names]
    if calibration is None or any(d is None for _, d in dacs):
        return None, []
    return calibration, [LayerDac(layer=name, **d.model_dump()) for name, d in dacs
                         if d is not None]


def _write_npz(path: Path, layout: Layout, arrays: ArrayLevels,
               calibration: DacCalibrationRecord | None, dac: list[LayerDac]) -> None:
    cell = layout.doc.target.cell
    keys = list(arrays)
    dac_arrays = {} if calibration is None else {
        "dac_layer": np.array([d.layer for d in dac], dtype=str),
        "dac_scale": np.array([d.scale for d in dac], dtype=np.float64),
        "dac_signed": np.array([d.signed for d in dac], dtype=bool),
        "dac_bits": np.array([d.bits for d in dac], dtype=np.int32),
        "dac_data": np.array(calibration.data, dtype=str),
        "dac_samples": np.array(calibration.samples, dtype=np.int64)}
    np.savez_compressed(
        path,
        core=np.array([k[0] for k in keys], dtype=np.int32),
        array=np.array([k[1] for k in keys], dtype=np.int32),
        levels=np.stack([arrays[k][0] for k in keys]),
        programmed=np.stack([arrays[k][1] for k in keys]),
        conductance_us=np.asarray(level_conductances_us(cell.g_min_us, cell.g_max_us,
                                                        2**cell.bits)), **dac_arrays)


def _write_csvs(tmp: Path, arrays: ArrayLevels) -> dict[str, str]:
    (tmp / "csv").mkdir()
    files = {}
    for (core, array), (levels, programmed, _) in arrays.items():
        name = f"csv/core{core:04d}_array{array:04d}.csv"
        grid = np.where(programmed, levels.astype(np.int16), -1)
        np.savetxt(tmp / name, grid, fmt="%d", delimiter=",")
        files[name] = _sha(tmp / name)
    return files


def _write_dac_csv(path: Path, calibration: DacCalibrationRecord, dac: list[LayerDac]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DAC_COLUMNS)
        for d in dac:  # repr: the shortest text that gives back the exact scale
            writer.writerow([d.layer, repr(d.scale), int(d.signed), d.bits,
                             calibration.method, calibration.data, calibration.samples])


def _manifest(layout: Layout, arrays: ArrayLevels, calibration: DacCalibrationRecord | None,
              dac: list[LayerDac], files: dict[str, str]) -> ProgrammingManifest:
    target = layout.doc.target
    cell = target.cell
    return ProgrammingManifest(
        format=PROGRAMMING_FORMAT, version=1, target=target.name,
        layout_sha256=_sha(layout.root / LAYOUT_FILE),
        array=ArrayShape(rows=target.array.rows, cols=target.array.cols),
        levels=2**cell.bits,
        level_conductance_us=level_conductances_us(cell.g_min_us, cell.g_max_us, 2**cell.bits),
        write_verify_tolerance_us=cell.write_verify_tolerance_rel * (cell.g_max_us
                                                                    - cell.g_min_us),
        write_verify_tolerance_rel=cell.write_verify_tolerance_rel,
        arrays=[ProgrammedArray(core=c, array=a, layer=layer,
                                programmed_cells=int(programmed.sum()))
                for (c, a), (_, programmed, layer) in arrays.items()],
        dac_calibration=calibration, dac=dac, files=files)


def program_layout(layout: Layout, out_dir: Path,
                   formats: tuple[str, ...]) -> ProgrammingManifest:
    """Write ``arrays.npz`` and/or one CSV per array, plus ``manifest.json``; with the layout's
    DAC calibration (``neftc calibrate``), also each layer's input DAC setting (``dac.csv``, the
    npz's ``dac_*`` arrays and the manifest). All or nothing (``atomic_directory``)."""
    arrays = array_levels(layout)
    calibration, dac = _layer_dacs(layout)
    files: dict[str, str] = {}
    with atomic_directory(out_dir, marker=PROGRAM_MARKER) as tmp:
        if "npz" in formats:
            _write_npz(tmp / "arrays.npz", layout, arrays, calibration, dac)
            files["arrays.npz"] = _sha(tmp / "arrays.npz")
        if "csv" in formats:
            files.update(_write_csvs(tmp, arrays))
        if calibration is not None:
            _write_dac_csv(tmp / DAC_CSV, calibration, dac)
            files[DAC_CSV] = _sha(tmp / DAC_CSV)
        manifest = _manifest(layout, arrays, calibration, dac, files)
        (tmp / PROGRAM_MARKER).write_text(manifest.model_dump_json(indent=1) + "\n")
    return manifest


def write_programming_files(layout: Layout, out_dir: Path,
                            formats: tuple[str, ...]) -> dict[str, Any]:
    """``program_layout``, its manifest as JSON data (``docs/programming.schema.json``)."""
    return program_layout(layout, out_dir, formats).model_dump(mode="json")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LayoutDiff:
    changed_cells: int
    compared_cells: int
    per_layer: dict[str, int]
    per_array: list[dict[str, Any]]
    energy_pj: float
    cells: list[tuple[int, int, int, int, int, int]]  # core, array, row, col, old, new
    cells_limit: int = 1_000_000  # at most this many changed cells are kept in ``cells``

    @property
    def cells_truncated(self) -> bool:
        """True when ``cells`` lists fewer cells than change."""
        return len(self.cells) < self.changed_cells

    def truncation_note(self) -> str:
        return (f"showing {len(self.cells):,} of {self.changed_cells:,} changed cells "
                f"(--cells-limit {self.cells_limit:,}); raise --cells-limit to see more")

    def as_dict(self, with_cells: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"changed_cells": self.changed_cells,
                                "compared_cells": self.compared_cells,
                                "per_layer": self.per_layer, "per_array": self.per_array,
                                "reprogramming_energy_pj": self.energy_pj}
        if with_cells:
            data["cells"] = [dict(zip(("core", "array", "row", "col", "old", "new"), c))
                             for c in self.cells]
            data["cells_listed"] = len(self.cells)
            data["cells_truncated"] = self.cells_truncated
            if self.cells_truncated:
                data["cells_note"] = self.truncation_note()
        return data


def diff_layouts(old: Layout, new: Layout, keep_cells: int = 1_000_000) -> LayoutDiff:
    """The cells whose programmed level differs between two layouts of the same model."""
    if [(layer.name, layer.weight_shape) for layer in old.doc.layers] != \
            [(layer.name, layer.weight_shape) for layer in new.doc.layers]:
        raise LayoutError("the two layouts do not hold the same layers (names and weight "
                          "shapes); neftc diff compares layouts of one model")
    old_arrays, new_arrays = array_levels(old), array_levels(new)
    if set(old_arrays) != set(new_arrays) or old.doc.target.array != new.doc.target.array:
        raise LayoutError("the two layouts place their tiles on different arrays; diff needs the "
                          "same target and placement")
    per_layer: dict[str, int] = {}
    per_array = []
    cells: list[tuple[int, int, int, int, int, int]] = []
    changed = compared = 0
    for key, (levels_old, programmed, layer) in old_arrays.items():
        levels_new, programmed_new, _ = new_arrays[key]
        mask = (levels_old != levels_new) & (programmed | programmed_new)
        count = int(mask.sum())
        compared += int(programmed.sum())
        per_layer[layer] = per_layer.get(layer, 0) + count
        if count:
            per_array.append({"core": key[0], "array": key[1], "layer": layer, "changed": count})
            for row, col in zip(*np.nonzero(mask)):
                if len(cells) >= keep_cells:
                    break
                cells.append((key[0], key[1], int(row), int(col), int(levels_old[row, col]),
                              int(levels_new[row, col])))
        changed += count
    # each changed cell is programmed again: its expected write-verify pulses, as compile's cost
    energy = changed * target_pulses_per_cell(new.doc.target) * \
        new.doc.target.cost.cell_write_energy_pj
    return LayoutDiff(changed, compared, per_layer, per_array, energy, cells, keep_cells)
