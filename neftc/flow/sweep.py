"""``neftc sweep``: a Monte-Carlo grid (layouts x sigmas x noise modes x periphery x chips) that
records every finished chip instance in a results store (:mod:`neftc.flow.sweep_store`) and,
run again, computes only the chips the store lacks; and ``neftc sweep --report``: per-cell
statistics and accuracy-vs-sigma plots from the store.

A chip is set up exactly as ``neftc verify`` sets it up (``fit_data``, ``set_dac``,
``noise_free``; chip ``i`` is ``Emulator.instance(i)`` of the seed, run by ``predict``), so its
accuracy equals the one ``neftc verify --json`` lists for the same layout, data, seed, sigma,
noise and periphery.

Under a process group (``torchrun`` or ``--workers``), rank 0 reads which chips a cell lacks and
tells the others; the missing chips are computed in rounds of one chip per rank (position ``i``
of the missing list on rank ``i mod world``) and gathered with exact sums; rank 0 alone opens
the store and writes each round, one transaction per chip.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from neftc.atomic import atomic_files
from neftc.datasets.base import Dataset
from neftc.datasets.spec import load_dataset
from neftc.distributed import SINGLE, Group
from neftc.errors import NeftcError, OutputError
from neftc.flow.sweep_store import (
    Cell,
    ChipRow,
    NoiseFree,
    SweepStore,
    data_sha256,
    layout_sha256,
)
from neftc.flow.verify import VerifySettings, fit_data, mc_record, noise_free, set_dac
from neftc.format.reader import Layout, load_layout
from neftc.progress import no_bar
from neftc.runtime.emulator import Emulator
from neftc.runtime.inputs import Inputs
from neftc.runtime.montecarlo import confidence, predict, probabilities, summarize, top1
from neftc.runtime.noise import NoiseMode

Periphery = Literal["ideal", "target"]
NOISE_MODES: tuple[NoiseMode, ...] = ("cell", "paper", "off")
PERIPHERIES: tuple[Periphery, ...] = ("ideal", "target")
REPORT_FORMAT = "neftc-sweep-report"
REPORT_FILE = "sweep-report.json"
#: What the report states about its numbers (and tests/test_sweep.py checks).
SAME_AS_VERIFY = ("each stored chip accuracy equals the one 'neftc verify --json' lists in "
                  "chip_accuracies for the same layout, data, seed, sigma, noise and periphery "
                  "(and --calib-samples for the target periphery), and a cell's statistics are "
                  "verify's over the same chips")


@dataclass(frozen=True)
class SweepSettings:
    sigmas: tuple[float, ...]
    noises: tuple[NoiseMode, ...] = ("cell",)
    peripheries: tuple[Periphery, ...] = ("target",)
    chips: int = 100  # chip instances 0 .. chips-1 per cell
    seed: int = 0
    batch_size: int = 1024
    calib_samples: int = 512
    split: bool = False  # an x,y .npz: whole as the test set (as verify), or split (--split)

    def __post_init__(self) -> None:
        if not self.sigmas:
            raise NeftcError("give at least one --sigma")
        for noise in self.noises:
            if noise not in NOISE_MODES:
                raise NeftcError(f"--noise must be one of {', '.join(NOISE_MODES)}, got "
                                 f"{noise!r}")
        for periphery in self.peripheries:
            if periphery not in PERIPHERIES:
                raise NeftcError(f"--periphery must be ideal or target, got {periphery!r}")
        if "paper" in self.noises and "target" in self.peripheries:
            raise NeftcError("--noise paper is the weight-level formula and has no form for the "
                             "target's DAC/ADC path; sweep it with --periphery ideal only (run "
                             "the target periphery with --noise cell or off in another sweep "
                             "on the same store)")
        for noise in self.noises:
            for periphery in self.peripheries:
                self.verify_settings(noise, periphery)  # the bounds, named as the flags

    def verify_settings(self, noise: NoiseMode, periphery: Periphery) -> VerifySettings:
        """The ``neftc verify`` settings of one (noise, periphery) of the grid."""
        return VerifySettings(sigmas=self.sigmas, trials=self.chips, seed=self.seed,
                              noise=noise, ideal_periphery=periphery == "ideal",
                              batch_size=self.batch_size, calib_samples=self.calib_samples)


@dataclass(frozen=True)
class SweepOutcome:
    cells: int
    chips: int  # chip instances in the grid
    stored_before: int  # of them, already in the store when the sweep started
    computed: int  # chips this sweep computed (all ranks)
    added: int  # rows this sweep added (computed - added: stored meanwhile by another sweep)


@dataclass
class _Source:
    """One layout with the data fitted to it."""

    path: Path
    layout: Layout
    sha256: str
    data: Dataset
    data_sha256: str


def _source(path: Path, data: Dataset) -> _Source:
    layout = load_layout(path)
    probe = Emulator(layout, sigma=0.0, ideal_periphery=True)
    fitted = fit_data(probe, layout, data)
    return _Source(path, layout, layout_sha256(path), fitted,
                   data_sha256(fitted.test.inputs(), fitted.test.y))


def chip_row(emulator: Emulator, x: Inputs, y: torch.Tensor, chip: int,
             batch_size: int) -> ChipRow:
    """Chip instance ``chip`` of the emulator's seed: its top-1 accuracy (as ``monte_carlo``
    scores it) and mean top-1 softmax probability over the test set."""
    logits = predict(emulator, x, batch_size, emulator.instance(chip))
    return ChipRow(chip, top1(logits, y), confidence(probabilities(logits)))


def _dac_identity(dac: tuple[str, int, dict[str, Any]] | None) -> tuple[str, str]:
    """(description, SHA-256) of the input DAC ranges ``set_dac`` chose; empty when ideal."""
    if dac is None:
        return "", ""
    ranges = {name: record.model_dump(mode="json") for name, record in dac[2].items()}
    text = json.dumps(ranges, sort_keys=True)
    where = "stored in the layout" if dac[0] == "layout" else dac[0]
    return where, hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _Run:
    """A sweep in progress: the group, the store (rank 0 only) and the counts."""

    settings: SweepSettings
    group: Group
    store: SweepStore | None
    bar: Any = None
    computed: int = 0
    added: int = 0

    def missing(self, cell: Cell) -> list[int]:
        """The chips of ``cell`` not in the store: read by rank 0, the same list on all."""
        mask = torch.zeros(self.settings.chips, dtype=torch.int64)
        if self.store is not None:
            mask[:] = 1
            stored = [c for c in self.store.stored_chips(cell) if c < self.settings.chips]
            mask[stored] = 0
        self.group.sum(mask)  # only rank 0 filled it
        return [int(c) for c in torch.nonzero(mask).flatten()]

    def run_cell(self, emulator: Emulator, x: Inputs, y: torch.Tensor, cell: Cell) -> None:
        world = self.group.world
        missing = self.missing(cell)
        for start in range(0, len(missing), world):
            chips = missing[start:start + world]
            values = torch.zeros(len(chips), 2, dtype=torch.float64)
            for index in self.group.shard(range(len(chips))):
                row = chip_row(emulator, x, y, chips[index], self.settings.batch_size)
                values[index, 0], values[index, 1] = row.accuracy, row.mean_confidence
            self.group.sum(values)  # each row from one rank, zeros from the others: exact
            self.computed += len(chips)
            if self.store is not None:
                for chip, (accuracy, confidence) in zip(chips, values.tolist()):
                    self.added += self.store.add_chip(cell, ChipRow(chip, accuracy, confidence))
                    if self.bar is not None:
                        self.bar.update()


def _cells(source: _Source, settings: SweepSettings) -> Iterator[Cell]:
    for noise in settings.noises:
        for periphery in settings.peripheries:
            for sigma in settings.sigmas:
                yield Cell(source.sha256, source.data_sha256, sigma, noise, periphery,
                           settings.seed)


def run_sweep(layouts: list[Path], data_spec: str, store_path: Path, settings: SweepSettings,
              progress: bool = False, group: Group = SINGLE) -> SweepOutcome:
    """Run the grid of ``settings`` over ``layouts`` on ``data_spec``'s test split, adding every
    chip the store at ``store_path`` lacks (created when missing). Every process of ``group``
    calls this; rank 0 alone opens and writes the store and returns the counts."""
    data = load_dataset(data_spec, split=settings.split)  # as verify reads it
    sources = [_source(Path(path), data) for path in layouts]
    with ExitStack() as stack:
        store = stack.enter_context(SweepStore(store_path)) if group.is_main else None
        cells = [cell for source in sources for cell in _cells(source, settings)]
        grid = len(cells) * settings.chips
        stored_before = 0
        if store is not None:
            for source in sources:
                store.name_layout(source.sha256, str(source.path), source.layout.doc.target.name)
                store.name_data(source.data_sha256, data_spec, source.data.name,
                                len(source.data.test))
            stored_before = sum(len([c for c in store.stored_chips(cell)
                                     if c < settings.chips]) for cell in cells)
        bar = stack.enter_context(tqdm(
            total=grid, initial=stored_before, desc="chip instances", unit="chip",
            disable=no_bar(progress and group.is_main)))
        run = _Run(settings, group, store, bar)
        for source in sources:
            _run_layout(run, source, data_spec)
    return SweepOutcome(len(cells), grid, stored_before, run.computed, run.added)


def _run_layout(run: _Run, source: _Source, data_spec: str) -> None:
    settings = run.settings
    x, y = source.data.test.inputs(), source.data.test.y
    for noise in settings.noises:
        for periphery in settings.peripheries:
            verify = settings.verify_settings(noise, periphery)
            emulator = Emulator(source.layout, sigma=0.0, seed=settings.seed, noise=noise,
                                ideal_periphery=periphery == "ideal", faults=verify.faults)
            dac = None
            if periphery == "target":
                dac = set_dac(emulator, source.layout, source.data, data_spec, verify)
            if run.store is not None:
                where, digest = _dac_identity(dac)
                stored = run.store.noise_free(source.sha256, source.data_sha256, periphery)
                accuracy = (stored.accuracy if stored is not None else
                            noise_free(emulator, source.layout, x, y, verify)[0])
                run.store.add_noise_free(source.sha256, source.data_sha256, periphery,
                                         NoiseFree(accuracy, where, digest))
            for sigma in settings.sigmas:
                emulator.set_sigma(sigma)
                run.run_cell(emulator, x, y, Cell(source.sha256, source.data_sha256, sigma,
                                                  noise, periphery, settings.seed))


def format_outcome(outcome: SweepOutcome, store: Path) -> str:
    return (f"grid: {outcome.cells} cells x chips = {outcome.chips} chip instances; "
            f"{outcome.stored_before} already stored, {outcome.computed} computed, "
            f"{outcome.added} added to {store}"
            + (f" ({outcome.computed - outcome.added} stored meanwhile by another sweep)"
               if outcome.computed > outcome.added else "") + "\n")


# ------------------------------------------------------------------------------ --report


def _mc(accuracies: np.ndarray) -> dict[str, Any]:
    return mc_record(summarize(accuracies)).model_dump(mode="json")  # verify's fields


def sweep_report(store_path: Path) -> dict[str, Any]:
    """The per-cell statistics of the store: one series per (layout, data, noise, periphery,
    seed), one row per sigma with verify's fields (``summarize`` of the stored accuracies, in
    chip order), the mean confidence and the noise-free accuracy."""
    with SweepStore(store_path, create=False) as store:
        layouts, datasets = store.layout_names(), store.data_names()
        series: dict[tuple[str, str, str, str, int], dict[str, Any]] = {}
        for cell in store.cells():
            key = (cell.layout_sha256, cell.data_sha256, cell.noise, cell.periphery, cell.seed)
            if key not in series:
                path, target = layouts.get(cell.layout_sha256, ("?", "?"))
                spec, name, samples = datasets.get(cell.data_sha256, ("?", "?", 0))
                free = store.noise_free(cell.layout_sha256, cell.data_sha256, cell.periphery)
                series[key] = {
                    "layout": path, "layout_sha256": cell.layout_sha256, "target": target,
                    "data": spec, "data_name": name, "data_sha256": cell.data_sha256,
                    "test_samples": samples, "noise": cell.noise, "periphery": cell.periphery,
                    "dac": None if free is None or not free.dac else free.dac,
                    "seed": cell.seed,
                    "quantized_accuracy": None if free is None else free.accuracy,
                    "results": []}
            rows = store.chips(cell)
            accuracies = np.array([row.accuracy for row in rows], dtype=np.float64)
            confidence = sum(row.mean_confidence for row in rows) / len(rows)
            series[key]["results"].append({
                "sigma": cell.sigma, "mc": _mc(accuracies), "mean_confidence": confidence,
                "chips_complete": [row.chip for row in rows] == list(range(len(rows)))})
    for entry in series.values():
        entry["results"].sort(key=lambda r: r["sigma"])
    return {"format": REPORT_FORMAT, "version": 1, "store": str(store_path),
            "note": SAME_AS_VERIFY, "series": list(series.values())}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_report(report: dict[str, Any]) -> str:
    """The human tables of ``sweep_report``."""
    lines = [f"sweep store {report['store']}: {len(report['series'])} series", "",
             f"note: {report['note']}"]
    header = (f"{'sigma':>6}  {'trials':>7}  {'MC mean':>8}  {'95% CI':>7}  {'std':>6}  "
              f"{'min':>6}  {'p5':>6}  {'max':>6}  {'conf':>6}  chips")
    for s in report["series"]:
        dac = f", DAC ranges {s['dac']}" if s["dac"] else ""
        lines += ["", f"layout {s['layout']} (sha256 {s['layout_sha256'][:12]}, target "
                  f"{s['target']}), data {s['data']} (sha256 {s['data_sha256'][:12]}, "
                  f"{s['test_samples']} test samples)",
                  f"noise '{s['noise']}', periphery {s['periphery']}{dac}, seed {s['seed']}; "
                  f"noise-free accuracy {_percent(s['quantized_accuracy'])}",
                  header, "-" * len(header)]
        for r in s["results"]:
            mc = r["mc"]
            lines.append(
                f"{r['sigma']:>6.3f}  {mc['trials']:>7}  {_percent(mc['mean']):>8}  "
                f"{_percent(mc['ci95']):>7}  {_percent(mc['std']):>6}  {_percent(mc['min']):>6}  "
                f"{_percent(mc['p5']):>6}  {_percent(mc['max']):>6}  "
                f"{_percent(r['mean_confidence']):>6}  "
                f"{'0..' + str(mc['trials'] - 1) if r['chips_complete'] else 'incomplete'}")
    return "\n".join(lines) + "\n"


def plot_name(series: dict[str, Any]) -> str:
    return (f"sweep-{series['layout_sha256'][:12]}-{series['data_sha256'][:12]}-"
            f"{series['noise']}-{series['periphery']}-seed{series['seed']}.png")


def _plot(series: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    results = series["results"]
    sigmas = [r["sigma"] for r in results]
    means = np.array([r["mc"]["mean"] for r in results]) * 100
    ci = np.array([r["mc"]["ci95"] or 0.0 for r in results]) * 100  # one chip: no band
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sigmas, means, marker="o", label="MC mean")
    ax.fill_between(sigmas, means - ci, means + ci, alpha=0.3, label="95 % CI of the mean")
    if series["quantized_accuracy"] is not None:
        ax.axhline(series["quantized_accuracy"] * 100, linestyle="--", color="gray",
                   label="noise-free")
    ax.set_xlabel("device variation sigma (relative to cell range)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    ax.set_title(f"{Path(series['layout']).name} on {series['data_name']}: noise "
                 f"{series['noise']}, {series['periphery']} periphery, seed {series['seed']}",
                 fontsize=9)
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``sweep-report.json`` and one accuracy-vs-sigma PNG per series into ``out_dir``,
    all or none (``atomic_files``); without matplotlib only the JSON. Returns the paths."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write the report into '{out_dir}': {exc}; give -o a "
                          f"folder") from None
    try:
        import matplotlib

        matplotlib.use("Agg")
        plots = [(s, out_dir / plot_name(s)) for s in report["series"]]
    except ImportError:
        plots = []
    dests = [out_dir / REPORT_FILE, *(path for _, path in plots)]
    with atomic_files(*dests) as temps:
        temps[0].write_text(json.dumps(report, indent=1) + "\n")
        for (series, _), temp in zip(plots, temps[1:]):
            _plot(series, temp)
    return dests
