"""``neftc verify``: Monte-Carlo accuracy sign-off of a layout over simulated chip instances."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from neftc.bounds import MAX_BATCH_SIZE, MAX_SEED, check_number
from neftc.datasets.base import Dataset, check_compatible, raw_pixel_warning
from neftc.datasets.fit import fit_inputs
from neftc.datasets.spec import load_dataset
from neftc.distributed import SINGLE, Group
from neftc.errors import DataError, LayoutError, NeftcError
from neftc.flow.records import (
    VERIFY_FORMAT,
    BnRecalibrationRecord,
    ComparedResult,
    CompareRecord,
    EffectsRecord,
    McRecord,
    PairedRecord,
    PeripheryUsed,
    RecalibratedResult,
    SigmaResult,
    UncertaintyRecord,
    VerifyRecord,
    effects_text,
)
from neftc.format.reader import Layout, load_layout
from neftc.format.schema import DacRecord
from neftc.progress import no_bar
from neftc.runtime.chip import ChipInstance
from neftc.runtime.effects import effects_for
from neftc.runtime.emulator import Emulator
from neftc.runtime.inputs import Inputs, rows
from neftc.runtime.montecarlo import McResult, McStats, PairedStats, evaluate, monte_carlo, paired
from neftc.runtime.noise import NoiseMode
from neftc.runtime.periphery import InputQuant
from neftc.runtime.recalibration import batch_norms, recalibrate_batch_norm
from neftc.targets.physics import EffectsSpec
from neftc.targets.spec import SIGMA_REL_MAX

#: Most chip instances per sigma: the run keeps one accuracy per chip, nothing more.
MAX_TRIALS = 10**6
MAX_CHIPS_PER_PASS = 1024
#: Most samples a count option (--calib-samples, --samples, --dac-samples) may ask for.
MAX_SAMPLES = 10**8
#: Most unlabelled inputs per chip for --bn-recalibrate: they run through the chip in one pass.
MAX_RECALIBRATION_SAMPLES = 16_384


@dataclass(frozen=True)
class VerifySettings:
    sigmas: tuple[float, ...] | None = None  # None: the target's own sigma
    trials: int = 100
    seed: int = 0
    noise: NoiseMode = "cell"
    ideal_periphery: bool = False
    faults: bool = True
    batch_size: int = 1024
    calib_samples: int = 512
    chips_per_pass: int = 1
    device: str = "cpu"
    compare: str | Path | None = None  # --compare: layout B, on the same chip instances
    bn_recalibrate: int | None = None  # --bn-recalibrate: unlabelled train inputs per chip
    split: bool = False  # --split: split an x,y .npz like train does (else all of it is test)
    ideal_effects: tuple[str, ...] = ()  # --ideal: device effects switched off ("all": every one)
    t_inference_s: float | None = None  # --t-inference: seconds after programming (drift)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~neftc.errors.NeftcError` naming the ``neftc verify`` flag of a value
        out of range (run on construction)."""
        for sigma in self.sigmas or ():
            check_number("--sigma", sigma, 0, SIGMA_REL_MAX)
        check_number("--mc", self.trials, 1, MAX_TRIALS, integer=True)
        check_number("--seed", self.seed, 0, MAX_SEED, integer=True)
        check_number("--batch-size", self.batch_size, 1, MAX_BATCH_SIZE, integer=True)
        check_number("--calib-samples", self.calib_samples, 1, MAX_SAMPLES, integer=True)
        check_number("--chips-per-pass", self.chips_per_pass, 1, MAX_CHIPS_PER_PASS,
                     integer=True)
        effects_for(EffectsSpec(), ideal=self.ideal_effects, t_inference_s=self.t_inference_s)
        if self.chips_per_pass > 1 and not self.ideal_periphery:
            raise NeftcError(f"--chips-per-pass {self.chips_per_pass} batches chip instances on "
                             f"the ideal periphery only; the DAC/ADC path (the default) runs one "
                             f"chip per pass: add --ideal-periphery or drop --chips-per-pass")
        if self.bn_recalibrate is not None:
            check_number("--bn-recalibrate", self.bn_recalibrate, 1, MAX_RECALIBRATION_SAMPLES,
                         integer=True)
            if self.chips_per_pass > 1:
                raise NeftcError("--bn-recalibrate re-calibrates and runs one chip instance at "
                                 "a time; drop --chips-per-pass")
            if self.compare is not None:
                raise NeftcError("--bn-recalibrate and --compare cannot be combined; compare "
                                 "the plain layouts with --compare, and run --bn-recalibrate "
                                 "on each (chip i is the same chip in both runs)")


def _calibration_inputs(data: Dataset, count: int) -> tuple[torch.Tensor, ...]:
    split = data.train if len(data.train) else data.test
    return tuple(rows(split.inputs(), 0, count))


def fit_data(emulator: Emulator, layout: Layout, data: Dataset) -> Dataset:
    """The data fitted to the layout's inputs (``fit_inputs``: x feeds the first, the arrays
    named after the others feed them, in order): its samples run, and its labels match the
    outputs."""
    input_shape = tuple(layout.doc.graph.input_shape[1:])
    if data.input_shape != input_shape:
        check_compatible(data, input_shape, 0)  # the shape error, with its hint
    data = fit_inputs(data, layout.doc.graph.inputs)
    with torch.no_grad():
        try:
            probe = emulator._run(emulator._inputs(rows(data.test.inputs(), 0, 1)))
        except RuntimeError as exc:
            raise DataError(f"the layout cannot run on samples of shape "
                            f"{tuple(data.test.x.shape[1:])}: {exc}") from None
    check_compatible(data, input_shape, int(probe.shape[-1]))
    return data


def set_dac(emulator: Emulator, layout: Layout, data: Dataset, data_spec: str,
             settings: VerifySettings) -> tuple[str, int, dict[str, DacRecord]]:
    """Set the input DAC ranges: the layout's when stored (``neftc calibrate``), else
    calibrated from ``data``. Returns (where they come from, samples, layer -> setting)."""
    stored = layout.doc.dac_calibration
    dacs = {layer.name: layer.dac for layer in layout.doc.layers}
    if stored is not None and None not in dacs.values():
        # The ranges sign-off and programming share (neftc calibrate): use them as stored.
        quant = {name: InputQuant(d.scale, d.signed, d.bits) for name, d in dacs.items()
                 if d is not None}
        emulator.set_input_quant(quant)
        dac, dac_samples = "layout", stored.samples
    else:
        calib = _calibration_inputs(data, settings.calib_samples)
        quant = emulator.calibrate(calib)
        dac_samples = int(calib[0].shape[0])
        dac = f"calibrated from {data_spec}, {dac_samples} samples"
    return dac, dac_samples, {name: DacRecord(scale=q.scale, signed=q.signed, bits=q.bits)
                              for name, q in quant.items()}


def mc_record(stats: McStats) -> McRecord:
    """``stats`` as the record verify and sweep report (``ci95`` null for one chip)."""
    values = stats.as_dict()
    ci95 = values.pop("ci95")
    return McRecord(**values, ci95=None if math.isnan(ci95) else ci95)  # type: ignore[arg-type]


def _paired_record(stats: PairedStats) -> PairedRecord:
    values = asdict(stats)
    ci95 = values.pop("ci95")
    return PairedRecord(**values, ci95=None if math.isnan(ci95) else ci95)


@dataclass(frozen=True)
class _Compared:
    """Layout B of ``--compare``, ready to run on A's data."""

    emulator: Emulator
    quantized: float  # noise-free, with the periphery of the sign-off
    record: CompareRecord


def _accuracies(result: McResult) -> list[float]:
    return [float(a) for a in result.accuracies]


def _sweep(emulator: Emulator, x: Inputs, y: torch.Tensor, sigmas: tuple[float, ...],
           quantized: float, settings: VerifySettings, progress: bool,
           compared: _Compared | None = None, calibration: Inputs | None = None,
           group: Group = SINGLE) -> list[SigmaResult]:
    """Monte Carlo over ``settings.trials`` chip instances at each sigma; with ``compared``,
    layout B on the same chips; with ``calibration``, the same chips with re-calibrated
    BatchNorms (``recalibrate_batch_norm`` on those inputs). With ``group``, the chips are split
    over its processes and every rank returns the results over all of them."""
    recalibrate = calibration is not None and bool(batch_norms(emulator))
    runs = 1 + (compared is not None) + recalibrate
    results = []
    bar = tqdm(total=len(sigmas) * settings.trials * runs, leave=False, disable=no_bar(progress),
               desc="chip instances" + (f" ({group.world} processes)" if group.distributed
                                        else ""))

    def run(emu: Emulator, prepare: Callable[[ChipInstance], ChipInstance] | None = None,
            chips_per_pass: int = settings.chips_per_pass) -> McResult:
        return monte_carlo(emu, x, y, settings.trials, batch_size=settings.batch_size,
                           chips_per_pass=chips_per_pass, prepare=prepare,
                           on_chips=bar.update, group=group)

    for sigma in sigmas:
        emulator.set_sigma(sigma)  # same network and DAC ranges, new device variation
        if settings.noise != "off":
            bar.set_postfix(sigma=sigma)
        result = run(emulator)
        extra: dict[str, Any] = {}
        if compared is not None:
            compared.emulator.set_sigma(sigma)
            other = run(compared.emulator)
            extra["compared"] = ComparedResult(quantized_accuracy=compared.quantized,
                                               mc=mc_record(other.stats),
                                               chip_accuracies=_accuracies(other))
            extra["paired"] = _paired_record(paired(result.accuracies, other.accuracies))
        if calibration is not None:
            recalibrated = result  # no BatchNorm: nothing to re-calibrate
            if recalibrate:
                recalibrated = run(emulator, lambda chip: recalibrate_batch_norm(
                    emulator, chip, calibration), chips_per_pass=1)
            extra["recalibrated"] = RecalibratedResult(
                mc=mc_record(recalibrated.stats), chip_accuracies=_accuracies(recalibrated),
                paired=_paired_record(paired(result.accuracies, recalibrated.accuracies)))
        results.append(SigmaResult(
            sigma=sigma, quantized_accuracy=quantized, mc=mc_record(result.stats),
            uncertainty=UncertaintyRecord(expected_kl=result.expected_kl,
                                          mean_confidence=result.mean_confidence),
            seconds=result.seconds, trials_per_second=result.trials_per_second,
            chip_accuracies=_accuracies(result), **extra))
    bar.close()
    return results


def _input_signature(layout: Layout) -> list[tuple[object, ...]]:
    """What a layout's inputs accept (dtype, per-sample shape, integer range)."""
    return [(i.dtype, tuple(i.shape[1:]), i.low, i.high) for i in layout.doc.graph.inputs]


def _draw_note(a: Emulator, b: Emulator) -> tuple[bool, str]:
    """Whether chip i draws the same random numbers in A and B, and what the pairing shares.
    A chip's numbers come per (seed, chip, stream, pipeline copy) generator, drawn layer after
    layer in graph order, one per weight (and per cell): tiles and placement do not enter."""
    def cells(emu: Emulator) -> list[tuple[object, ...]]:
        return [(name, layer.weight_shape, tuple(layer.levels.shape))
                for name, layer in emu.layers.items()]

    ca, cb = cells(a), cells(b)
    if ca != cb:
        first = next((x[0] for x, y in zip(ca, cb) if x != y), None)
        where = f"layer '{first}'" if first is not None else "the last layer of the shorter one"
        return False, (f"the crossbar layers differ from {where} on: chip i is drawn from the "
                       f"same (seed, chip) generators, but the random numbers line up only for "
                       f"the layers before it; the pairing is valid and removes less variance")
    same = ("every crossbar layer has the same name, weight shape and slicing: chip i draws the "
            "same standard normal per weight and cell and the same stuck-at cells in both (a "
            "cell's deviation scales with the level programmed, the same where the levels agree; "
            "tiles and placement do not change the draws)")
    copies = [(name, layer.copies, b.layers[name].copies) for name, layer in a.layers.items()
              if layer.copies != b.layers[name].copies]
    if not copies:
        return True, same
    listed = ", ".join(f"'{name}' {ka} vs {kb}" for name, ka, kb in copies)
    return False, (f"{same}; but the pipeline copies differ ({listed}): each copy after the "
                   f"first is drawn from its own generator, so those copies (and the output "
                   f"positions they compute) are not the same cells")


def _compared(layout: Layout, layout_dir: str | Path, data: Dataset, data_spec: str,
              emulator: Emulator, settings: VerifySettings) -> _Compared:
    """Layout ``settings.compare`` set up like A (seed, noise, periphery); refused when the two
    cannot be compared on the same chips and data."""
    other_dir = settings.compare
    assert other_dir is not None
    other = load_layout(other_dir)
    fix = "compile both from models of the same inputs and classes, for the same target"
    if other.doc.target != layout.doc.target:
        names = (layout.doc.target.name, other.doc.target.name)
        detail = (f"targets '{names[0]}' and '{names[1]}'" if names[0] != names[1] else
                  f"target '{names[0]}' with different settings (--set overrides)")
        raise LayoutError(f"cannot compare {layout_dir} with {other_dir}: they are compiled for "
                          f"{detail}, so their chips come from different device models; {fix}")
    if _input_signature(other) != _input_signature(layout):
        raise LayoutError(f"cannot compare {layout_dir} with {other_dir}: their inputs differ "
                          f"({_input_signature(layout)} vs {_input_signature(other)}); {fix}")
    emu = Emulator(other, sigma=0.0, seed=settings.seed, noise=settings.noise,
                   ideal_periphery=settings.ideal_periphery, faults=settings.faults,
                   device=settings.device, ideal_effects=settings.ideal_effects,
                   t_inference_s=settings.t_inference_s)
    probe = emulator._inputs(rows(data.test.inputs(), 0, 1))
    with torch.no_grad():
        classes = (int(emulator._run(probe).shape[-1]), int(emu._run(probe).shape[-1]))
    if classes[0] != classes[1]:
        raise LayoutError(f"cannot compare {layout_dir} with {other_dir}: they output "
                          f"{classes[0]} and {classes[1]} classes; {fix}")
    if not settings.ideal_periphery:
        set_dac(emu, other, data, data_spec, settings)
    quantized, ideal_quantized = noise_free(emu, other, data.test.inputs(), data.test.y,
                                             settings)
    same, note = _draw_note(emulator, emu)
    return _Compared(emu, quantized, CompareRecord(
        layout=str(other_dir), quantized_accuracy_ideal_periphery=ideal_quantized,
        same_draws=same, note=note))


def noise_free(emulator: Emulator, layout: Layout, x: Inputs, y: torch.Tensor,
                settings: VerifySettings) -> tuple[float, float]:
    """The noise-free chip's accuracy with ``emulator``'s periphery, and with ideal periphery
    (the same number when the periphery is ideal). Leaves ``emulator`` programmed ideal."""
    emulator.program_ideal()
    quantized = evaluate(emulator, x, y, settings.batch_size)
    if settings.ideal_periphery:
        return quantized, quantized
    ideal = Emulator(layout, sigma=0.0, ideal_periphery=True, device=settings.device)
    return quantized, evaluate(ideal, x, y, settings.batch_size)


def _recalibration_inputs(data: Dataset, data_spec: str, count: int) -> Inputs:
    """The first ``count`` samples of the training split: never the test samples scored."""
    available = len(data.train)
    if available == 0:
        raise DataError(f"--bn-recalibrate takes its unlabelled inputs from the data's training "
                        f"split, and {data_spec} has none (verify scores the test split and "
                        f"never calibrates on it); give data with a training split (an .npz "
                        f"with x_train/y_train or x/y, an IDX or CIFAR-10 folder with its "
                        f"training files) or drop --bn-recalibrate")
    if count > available:
        raise DataError(f"--bn-recalibrate {count} asks for more inputs than the "
                        f"{available} of {data_spec}'s training split; use at most {available}")
    return rows(data.train.inputs(), 0, count)


def verify_layout(layout_dir: str | Path, data_spec: str, settings: VerifySettings,
                  progress: bool = False, group: Group = SINGLE,
                  warn: Callable[[str], None] | None = None) -> VerifyRecord:
    """Sign off the layout in ``layout_dir`` on ``data_spec``'s test split. With ``group`` (one
    process of several, ``neftc.distributed``), every process runs its share of the chip
    instances and returns the same record; the per-chip accuracies do not depend on how many
    processes share the work. An ``x``,``y`` .npz is the test set, all of it, unless
    ``settings.split``; ``warn`` gets a warning on raw 0..255 integer images fed to a float
    input."""
    layout = load_layout(layout_dir)
    data = load_dataset(data_spec, split=settings.split)  # the data's split, never the seed's
    inputs = layout.doc.graph.inputs
    if warn is not None and group.is_main and inputs and "float" in str(inputs[0].dtype):
        message = raw_pixel_warning(data.test, data_spec)
        if message is not None:
            warn(message)
    emulator = Emulator(layout, sigma=0.0, seed=settings.seed, noise=settings.noise,
                        ideal_periphery=settings.ideal_periphery, faults=settings.faults,
                        device=settings.device, ideal_effects=settings.ideal_effects,
                        t_inference_s=settings.t_inference_s)
    if settings.chips_per_pass > 1 and emulator.noise.effects.read_noise:
        raise NeftcError(f"--chips-per-pass {settings.chips_per_pass} batches chip instances, "
                         "and the target's read noise draws fresh noise per chip and read: run "
                         "one chip per pass (drop --chips-per-pass) or switch it off with "
                         "--ideal read-noise")
    data = fit_data(emulator, layout, data)
    calibration = None
    if settings.bn_recalibrate is not None:
        calibration = _recalibration_inputs(data, data_spec, settings.bn_recalibrate)
    periphery: PeripheryUsed | Literal["ideal"] = "ideal"
    dac = None
    if not settings.ideal_periphery:
        dac = set_dac(emulator, layout, data, data_spec, settings)
    compared = None
    if settings.compare is not None:
        compared = _compared(layout, layout_dir, data, data_spec, emulator, settings)
    x, y = data.test.inputs(), data.test.y  # in the layout's input order (fitted)
    target = layout.doc.target
    quantized, ideal_quantized = noise_free(emulator, layout, x, y, settings)
    results = _sweep(emulator, x, y, settings.sigmas or (target.noise.sigma_rel,), quantized,
                     settings, progress and group.is_main, compared, calibration, group)
    if dac is not None:
        periphery = PeripheryUsed(
            input_bits=layout.doc.periphery.input_bits,
            dac_bits_per_cycle=layout.doc.periphery.dac_bits_per_cycle,
            adc_bits=layout.doc.periphery.adc_bits, calibration_samples=dac[1], dac=dac[0],
            dac_calibration=layout.doc.dac_calibration if dac[0] == "layout" else None,
            dac_layers=dac[2], partial_mvms_per_weight=emulator.partial_mvms_per_weight())
    recalibration = None
    if settings.bn_recalibrate is not None:
        recalibration = BnRecalibrationRecord(
            samples=settings.bn_recalibrate,
            batch_norms=[bn.node_name for bn in batch_norms(emulator)])
    return VerifyRecord(
        format=VERIFY_FORMAT, version=1, layout=str(layout_dir), target=target.name,
        data=data.name, test_samples=len(data.test), split=data.split, seed=settings.seed,
        noise=settings.noise, device=str(emulator.device), chips_per_pass=settings.chips_per_pass,
        state_ratio=target.noise.state_ratio, periphery=periphery,
        quantized_accuracy_ideal_periphery=ideal_quantized,
        faults=settings.faults and (target.faults.stuck_at_min_rate > 0
                                    or target.faults.stuck_at_max_rate > 0),
        results=results, compare=None if compared is None else compared.record,
        bn_recalibration=recalibration, effects=effects_record(emulator, settings))


def effects_record(emulator: Emulator, settings: VerifySettings) -> EffectsRecord:
    """What the sign-off's chips showed besides programming variation."""
    effects = emulator.noise.effects
    return EffectsRecord(active=list(emulator.active_effects),
                         ideal=list(settings.ideal_effects),
                         t_inference_s=effects.time_s, spec=effects.spec)


def run_verify(layout_dir: str | Path, data_spec: str, settings: VerifySettings,
               progress: bool = False, group: Group = SINGLE,
               warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``verify_layout`` as JSON data: what ``neftc verify --json`` prints
    (``docs/verify.schema.json``)."""
    return verify_layout(layout_dir, data_spec, settings, progress, group, warn).model_dump(
        mode="json")


def _periphery_lines(record: VerifyRecord) -> list[str]:
    periphery = record.periphery
    if periphery == "ideal":
        return ["periphery: ideal (no DAC/ADC quantisation)"]
    lines = [f"periphery: {periphery.input_bits}-bit inputs, {periphery.dac_bits_per_cycle} "
             f"bit(s) per cycle, {periphery.adc_bits}-bit ADC; noise-free accuracy with ideal "
             f"periphery {100 * record.quantized_accuracy_ideal_periphery:.2f} %"]
    cal = periphery.dac_calibration
    if periphery.dac == "layout" and cal is not None:
        lines.append(f"input DAC ranges: stored in the layout (calibrated from {cal.data}, "
                     f"{cal.samples} samples): the ones 'neftc program' writes")
    elif periphery.dac:
        lines.append(f"input DAC ranges: {periphery.dac} (not stored in the layout; store them "
                     f"for programming with 'neftc calibrate {record.layout} --data DATA')")
    return lines


def _percent(value: float | None, width: int) -> str:
    """``value`` (0..1) as a percentage ``width`` characters wide with its sign; ``-`` right
    aligned where there is none (a one-chip interval)."""
    if value is None or math.isnan(value):
        return f"{'-':>{width + 1}}"
    return f"{100 * value:>{width}.2f}%"


def _sigma(sigma: float, noise: str) -> str:
    """The sigma column: ``-`` with ``--noise off`` (no variation, whatever the sigma)."""
    return f"{'-':>6}" if noise == "off" else f"{sigma:>6.3f}"


def _result_line(row: SigmaResult, noise: str) -> str:
    mc = row.mc
    return (f"{_sigma(row.sigma, noise)}  {100 * row.quantized_accuracy:>8.2f}%  "
            f"{100 * mc.mean:>7.2f}%  {_percent(mc.ci95, 6)}  {100 * mc.std:>5.2f}%  "
            f"{100 * mc.min:>5.1f}%  {100 * mc.p5:>5.1f}%  {100 * mc.max:>5.1f}%  "
            f"{row.uncertainty.expected_kl:>7.4f}  "
            f"{100 * row.uncertainty.mean_confidence:>5.1f}%  "
            f"{mc.trials:>6}  {row.trials_per_second:>8.1f}")


def format_verify(report: VerifyRecord | Mapping[str, Any]) -> str:
    """The human table of a sign-off (JSON data is parsed with ``VerifyRecord``)."""
    r = report if isinstance(report, VerifyRecord) else VerifyRecord.model_validate(report)
    lines = [f"layout {r.layout} on target {r.target} (s = {r.state_ratio:g}), data {r.data} "
             f"({r.test_samples} test samples), noise model '{r.noise}', seed {r.seed}",
             f"train/test split: {r.split}", *_periphery_lines(r),
             effects_text(r.effects, r.target), ""]
    header = (f"{'sigma':>6}  {'quantized':>9}  {'MC mean':>8}  {'95% CI':>7}  {'std':>6}  "
              f"{'min':>6}  {'p5':>6}  {'max':>6}  {'E[KL]':>7}  {'conf':>6}  {'trials':>6}  "
              f"{'chips/s':>8}")
    lines += [header, "-" * len(header), *(_result_line(row, r.noise) for row in r.results)]
    if r.compare is not None:
        lines += ["", f"paired comparison: B = {r.compare.layout} against A = {r.layout} on the "
                  f"same {r.results[0].mc.trials} chip instances per sigma (noise-free accuracy "
                  f"of B with ideal periphery "
                  f"{100 * r.compare.quantized_accuracy_ideal_periphery:.2f} %)",
                  f"same chips: {r.compare.note}",
                  *_paired_table("A", "B", [(row.sigma, row.paired) for row in r.results],
                                 r.noise)]
    if r.bn_recalibration is not None:
        rec = r.bn_recalibration
        lines.append("")
        if not rec.batch_norms:
            lines.append(f"BatchNorm re-calibration ({rec.samples} training inputs per chip): "
                         "the layout has no BatchNorm, nothing to re-calibrate (results as "
                         "programmed)")
        else:
            lines.append(f"BatchNorm re-calibration: each chip re-estimates its "
                         f"{len(rec.batch_norms)} BatchNorm(s) from the first {rec.samples} "
                         f"training inputs run through it; the same chips as programmed (A) "
                         f"and re-calibrated (B)")
        lines += _paired_table("programmed", "re-calibrated", [
            (row.sigma, None if row.recalibrated is None else row.recalibrated.paired)
            for row in r.results], r.noise)
    return "\n".join(lines) + "\n"


def _paired_table(a: str, b: str, rows: list[tuple[float, PairedRecord | None]],
                  noise: str) -> list[str]:
    header = (f"{'sigma':>6}  {a + ' mean':>15}  {b + ' mean':>18}  {'B - A':>7}  "
              f"{'95% CI':>7}  {'B wins/ties/loses':>17}")
    lines = [header, "-" * len(header)]
    for sigma, p in rows:
        if p is None:
            continue
        lines.append(f"{_sigma(sigma, noise)}  {100 * p.mean_a:>14.2f}%  "
                     f"{100 * p.mean_b:>17.2f}%  "
                     f"{100 * p.mean_difference:>+6.2f}%  {_percent(p.ci95, 6)}  "
                     f"{f'{p.wins}/{p.ties}/{p.losses}':>17}")
    return lines
