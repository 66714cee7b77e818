"""Programming files (per physical array, the target level of every cell) and layout diffs."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neftc.atomic import atomic_directory
from neftc.errors import LayoutError
from neftc.format.reader import Layout
from neftc.targets.device_model import level_conductances_us

PROGRAM_MARKER = "manifest.json"
DAC_CSV = "dac.csv"
DAC_COLUMNS = ("layer", "scale", "signed", "bits", "method", "data", "samples")


def array_levels(layout: Layout) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray, str]]:
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


def write_programming_files(layout: Layout, out_dir: Path, formats: tuple[str, ...]) -> dict:
    """Write ``arrays.npz`` and/or one CSV per array, plus ``manifest.json``; with the layout's
    DAC calibration (``neftc calibrate``), also each layer's input DAC setting (``dac.csv``, the
    npz's ``dac_*`` arrays and the manifest)."""
    target = layout.doc.target
    n_levels = 2**target.cell.bits
    g_min, g_max = target.cell.g_min_us, target.cell.g_max_us
    tolerance_us = target.cell.write_verify_tolerance_rel * (g_max - g_min)
    arrays = array_levels(layout)
    calibration = layout.doc.dac_calibration
    dac = [(name, layout.dac(name)) for name in layout.layer_names]
    if calibration is None or any(d is None for _, d in dac):
        calibration, dac = None, []
    files: dict[str, str] = {}
    with atomic_directory(out_dir, marker=PROGRAM_MARKER) as tmp:
        if "npz" in formats:
            keys = list(arrays)
            dac_arrays = {} if calibration is None else {
                "dac_layer": np.array([name for name, _ in dac], dtype=str),
                "dac_scale": np.array([d.scale for _, d in dac], dtype=np.float64),
                "dac_signed": np.array([d.signed for _, d in dac], dtype=bool),
                "dac_bits": np.array([d.bits for _, d in dac], dtype=np.int32),
                "dac_data": np.array(calibration.data, dtype=str),
                "dac_samples": np.array(calibration.samples, dtype=np.int64)}
            np.savez_compressed(
                tmp / "arrays.npz",
                core=np.array([k[0] for k in keys], dtype=np.int32),
                array=np.array([k[1] for k in keys], dtype=np.int32),
                levels=np.stack([arrays[k][0] for k in keys]),
                programmed=np.stack([arrays[k][1] for k in keys]),
                conductance_us=np.asarray(level_conductances_us(g_min, g_max, n_levels)), **dac_arrays)
            files["arrays.npz"] = _sha(tmp / "arrays.npz")
        if "csv" in formats:
            (tmp / "csv").mkdir()
            for (core, array), (levels, programmed, _) in arrays.items():
                name = f"csv/core{core:04d}_array{array:04d}.csv"
                grid = np.where(programmed, levels.astype(np.int16), -1)
                np.savetxt(tmp / name, grid, fmt="%d", delimiter=",")
                files[name] = _sha(tmp / name)
        if calibration is not None:
            with open(tmp / DAC_CSV, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(DAC_COLUMNS)
                for name, d in dac:  # repr: the shortest text that gives back the exact scale
                    writer.writerow([name, repr(d.scale), int(d.signed), d.bits,
                                     calibration.method, calibration.data, calibration.samples])
            files[DAC_CSV] = _sha(tmp / DAC_CSV)
        manifest = {
            "format": "neftc-programming", "version": 1, "target": target.name,
            "layout_sha256": hashlib.sha256(
                (layout.root / "layout.json").read_bytes()).hexdigest(),
            "array": {"rows": target.array.rows, "cols": target.array.cols},
            "levels": n_levels,
            "level_conductance_us": level_conductances_us(g_min, g_max, n_levels),
            "write_verify_tolerance_us": tolerance_us,
            "write_verify_tolerance_rel": target.cell.write_verify_tolerance_rel,
            "arrays": [{"core": c, "array": a, "layer": layer,
                        "programmed_cells": int(programmed.sum())}
                       for (c, a), (_, programmed, layer) in arrays.items()],
            "dac_calibration": None if calibration is None else calibration.model_dump(),
            "dac": [{"layer": name, **d.model_dump()} for name, d in dac],
            "files": files,
        }
        (tmp / PROGRAM_MARKER).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


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
    if [(l.name, l.weight_shape) for l in old.doc.layers] != \
            [(l.name, l.weight_shape) for l in new.doc.layers]:
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
    energy = changed * new.doc.target.cost.cell_write_energy_pj
    return LayoutDiff(changed, compared, per_layer, per_array, energy, cells, keep_cells)
