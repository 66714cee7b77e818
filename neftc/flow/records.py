"""The typed outputs of the hardware flow: pydantic models of ``neftc verify --json`` and
``verify.json``, the layout summary (``neftc inspect --json``) with its cost estimate, the
programming manifest (``neftc program``'s ``manifest.json``) and ``demo.json``.

The code builds these models and writes ``model.model_dump_json(indent=1)``; readers parse the
files with the same models. Their JSON Schemas are in ``docs/*.schema.json`` (``SCHEMAS``;
regenerate with ``write_schemas``). The DAC, placement and totals records are the layout's own
(``neftc.format.schema``), so a fact has one definition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from neftc.format.schema import DacCalibrationRecord, DacRecord, PlacementRecord, SummaryRecord
from neftc.runtime.noise import NoiseMode
from neftc.targets.physics import EffectsSpec

VERIFY_FORMAT = "neftc-verify"
PROGRAMMING_FORMAT = "neftc-programming"
DEMO_FORMAT = "neftc-demo"


class Record(BaseModel):
    """An output record: frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ------------------------------------------------------------------------------ neftc verify


class McRecord(Record):
    """Accuracy distribution over the simulated chip instances of one sigma."""

    trials: int = Field(ge=1, description="chip instances evaluated")
    mean: float = Field(description="mean test accuracy (0..1)")
    std: float = Field(description="standard deviation across chips (ddof=1; 0 for one chip)")
    ci95: float | None = Field(description="half-width of the 95 % confidence interval of the "
                               "mean (Student t); null for one chip")
    min: float
    p5: float = Field(description="5th percentile")
    max: float


class UncertaintyRecord(Record):
    expected_kl: float = Field(description="mean KL divergence of a chip's predictions from the "
                               "noise-free chip's")
    mean_confidence: float = Field(description="mean top-1 softmax probability")


class PairedRecord(Record):
    """B against A chip instance by chip instance (the same ``(seed, chip)`` draws): the
    per-chip differences ``B - A`` of test accuracy."""

    chips: int = Field(ge=1, description="chip instances paired")
    mean_a: float = Field(description="mean accuracy of A over the chips")
    mean_b: float = Field(description="mean accuracy of B over the same chips")
    mean_difference: float = Field(description="mean over chips of B - A")
    std_difference: float = Field(description="standard deviation of B - A over chips (ddof=1; "
                                  "0 for one chip)")
    ci95: float | None = Field(description="half-width of the 95 % confidence interval of "
                               "mean_difference (Student t over the per-chip differences); null "
                               "for one chip")
    wins: int = Field(ge=0, description="chips where B is more accurate than A")
    ties: int = Field(ge=0, description="chips where B and A are equally accurate")
    losses: int = Field(ge=0, description="chips where B is less accurate than A")


class ComparedResult(Record):
    """``--compare B``: layout B at this sigma on the same chip instances."""

    quantized_accuracy: float = Field(description="B's noise-free chip with this periphery")
    mc: McRecord
    chip_accuracies: list[float] = Field(description="per chip instance, in chip-index order "
                                         "(as SigmaResult.chip_accuracies)")


class RecalibratedResult(Record):
    """``--bn-recalibrate N``: the same chip instances after per-chip BatchNorm
    re-calibration."""

    mc: McRecord
    chip_accuracies: list[float] = Field(description="per chip instance, in chip-index order "
                                         "(as SigmaResult.chip_accuracies)")
    paired: PairedRecord = Field(description="A: the chips as programmed, B: re-calibrated")


class SigmaResult(Record):
    """The sign-off at one device variation."""

    sigma: float = Field(description="device variation, relative to the cell range")
    quantized_accuracy: float = Field(description="noise-free chip with this periphery")
    mc: McRecord
    uncertainty: UncertaintyRecord
    seconds: float = Field(description="wall time of the Monte Carlo run")
    trials_per_second: float
    chip_accuracies: list[float] = Field(
        default_factory=list, description="test accuracy of every chip instance, in chip-index "
        "order: entry i is chip i of the seed (the (seed, i) draw); empty only in records "
        "written before per-chip accuracies were reported")
    compared: ComparedResult | None = Field(default=None, description="--compare: layout B "
                                            "on the same chips, else null")
    paired: PairedRecord | None = Field(default=None, description="--compare: B (the "
                                        "compared layout) against A (this one), else null")
    recalibrated: RecalibratedResult | None = Field(
        default=None, description="--bn-recalibrate: the same chips with re-calibrated "
        "BatchNorm statistics, else null")


class CompareRecord(Record):
    """``--compare B``: the layout compared and what "the same chip" means for the two."""

    layout: str = Field(description="layout B")
    quantized_accuracy_ideal_periphery: float = Field(description="B's, noise-free")
    same_draws: bool = Field(description="true when every crossbar layer of A and B has the "
                             "same name, order, weight shape, slicing and pipeline copies: chip i "
                             "then draws the same random numbers per weight and cell in both")
    note: str = Field(description="what the pairing shares, in words")


class BnRecalibrationRecord(Record):
    """``--bn-recalibrate N``: per-chip BatchNorm re-calibration after programming."""

    samples: int = Field(ge=1, description="unlabelled inputs per chip: the first N of the "
                         "training split, the same for every chip")
    batch_norms: list[str] = Field(description="the layout graph's BatchNorm nodes, in network "
                                   "order (empty: nothing to re-calibrate, the results equal "
                                   "the plain ones)")


class PeripheryUsed(Record):
    """The DAC/ADC the sign-off simulated (``periphery`` is the string ``"ideal"`` otherwise)."""

    input_bits: int
    dac_bits_per_cycle: int
    adc_bits: int
    calibration_samples: int = Field(description="samples that set the DAC ranges (the "
                                     "layout's calibration when dac is 'layout')")
    dac: str = Field(description="'layout' (the ranges stored by neftc calibrate) or "
                     "'calibrated from DATA, N samples' (verify's own, not stored)")
    dac_calibration: DacCalibrationRecord | None = Field(
        description="the layout's record when dac is 'layout', else null")
    dac_layers: dict[str, DacRecord] = Field(description="layer -> the DAC setting used")
    partial_mvms_per_weight: dict[str, int] = Field(
        description="layer -> crossbar partial MVMs per weight (cycles x phases x slices x "
        "polarities; 1 where the ADC lets them fold)")


class EffectsRecord(Record):
    """The device effects besides programming variation a sign-off's chips showed."""

    active: list[str] = Field(description="the effects that changed what the chips computed, "
                              "in the order they act (empty: programming variation only)")
    ideal: list[str] = Field(description="the effects switched off with --ideal")
    t_inference_s: float = Field(description="seconds after programming at which the chips "
                                 "were read (drift)")
    spec: EffectsSpec = Field(description="the target's effects as applied (those switched off "
                              "at their defaults)")


def effects_text(effects: EffectsRecord | None, target: str) -> str:
    """What a sign-off's chips showed besides programming variation, in one line (the text and
    HTML reports)."""
    if effects is None:
        return "device effects: not recorded (a record from before device effects existed)"
    switched = f"; switched off: {', '.join(effects.ideal)}" if effects.ideal else ""
    drift = effects.spec.drift
    unread = (f"; drift stated but read at its reference time t0 = {drift.t0_s:g} s, before any "
              "drift (give --t-inference)" if "drift" not in effects.active
              and (drift.nu > 0 or drift.nu_std > 0) else "")
    if not effects.active:
        return (f"device effects: none besides programming variation{switched}{unread} ('neftc "
                f"targets {target}' lists the target's)")
    hours = effects.t_inference_s / 3600
    when = f", read {hours:.3g} h after programming" if "drift" in effects.active else ""
    return f"device effects: {', '.join(effects.active)}{when}{switched}{unread}"


class VerifyRecord(Record):
    """``neftc verify --json`` and the ``verify.json`` it saves in the layout directory."""

    format: Literal["neftc-verify"] = Field(description="always 'neftc-verify'")
    version: Literal[1] = Field(description="bumped on an incompatible change")
    layout: str = Field(description="the layout directory verified")
    target: str
    data: str = Field(description="the data set's name")
    test_samples: int
    split: str = Field(description="how the train/test split was made")
    seed: int
    noise: NoiseMode
    device: str = Field(description="torch device of the simulation")
    chips_per_pass: int
    state_ratio: float = Field(description="the target's state-dependence ratio s (its "
                               "intermediate levels vary s times more than the extreme ones)")
    periphery: Literal["ideal"] | PeripheryUsed
    quantized_accuracy_ideal_periphery: float
    faults: bool = Field(description="stuck-at faults were drawn")
    results: list[SigmaResult] = Field(description="one per sigma, in the order asked")
    compare: CompareRecord | None = Field(default=None, description="--compare, else null")
    bn_recalibration: BnRecalibrationRecord | None = Field(
        default=None, description="--bn-recalibrate, else null")
    effects: EffectsRecord | None = Field(
        default=None, description="device effects besides programming variation (null in "
        "records written before they existed: none)")


# ------------------------------------------------------------------------------ cost estimate


class PerInference(Record):
    """Counts per inference (one input sample); see ``neftc.flow.cost``."""

    array_reads: int
    cell_reads: int
    dac_conversions: int
    adc_conversions: int
    digital_adds: int
    bytes_moved: float = Field(description="bytes_exchanged + replica_bytes")
    bytes_exchanged: int = Field(description="the placement's traffic between tiles")
    replica_bytes: float = Field(description="bytes to and from pipeline copies")
    byte_hops: float = Field(description="placement_byte_hops + replica_byte_hops")
    placement_byte_hops: float
    replica_byte_hops: float


class EnergyRecord(Record):
    """Energy per inference in pJ."""

    arrays_pj: float
    dac_pj: float
    adc_pj: float
    digital_pj: float
    interconnect_pj: float
    total_pj: float = Field(description="the sum of the others")


class LatencyRecord(Record):
    sequential: float = Field(description="ns: the layers one after the other")
    pipelined_interval: float = Field(description="ns between inferences, pipelined")


class AreaRecord(Record):
    used_arrays: float = Field(description="um2 of the arrays used")
    chip: float = Field(description="um2 of all the chip's arrays")


class ProgrammingCost(Record):
    """Programming the chip, once (not per inference)."""

    cells: int = Field(description="programmed cells, copies included")
    replica_cells: int = Field(description="of which in pipeline copies")
    pulses_per_cell: float = Field(
        description="expected programming pulses per cell: 1 without write-verify "
        "(target.effects.write_verify.max_pulses 0); with it, the analytic expectation "
        "(1 - (1-p)^N) / p at the target's sigma for the level with the largest programming "
        "spread (an upper bound on the mean over the levels)")
    energy_pj: float = Field(description="write-verify energy of all cells: cells x "
                             "pulses_per_cell x cost.cell_write_energy_pj")
    serial_time_s: float | None = Field(
        default=None, description="programming time one cell at a time: cells x "
        "pulses_per_cell x cost.cell_write_latency_ns (divide by the cells the chip programs "
        "in parallel); absent in records before issue 16")


class LayerCost(Record):
    name: str
    array_reads: int
    cell_reads: int
    dac_conversions: int
    adc_conversions: int
    digital_adds: int
    replication: int
    reads_per_copy: list[int] = Field(description="array reads on each copy (sum: array_reads)")
    replica_bytes: float
    replica_byte_hops: float
    time_ns: float = Field(description="time of the busiest copy per inference")


class CostEstimate(Record):
    """``neftc.flow.cost.estimate_cost``: the layout's cost per inference (``summary.cost``)."""

    per_inference: PerInference
    energy_pj: EnergyRecord
    latency_ns: LatencyRecord
    area_um2: AreaRecord
    programming: ProgrammingCost
    layers: list[LayerCost]
    assumptions: str


# ------------------------------------------------------------------------------ layout summary


class LayerSummary(Record):
    name: str
    op: Literal["linear", "conv1d", "conv2d"]
    weight_shape: list[int]
    matrix: list[int] = Field(description="[rows, cols] of the weight matrix")
    bits: int = Field(description="weight bits")
    per_channel: bool
    slices: int
    polarities: int
    tiles: int
    replication: int = Field(description="copies of every tile")
    arrays: int = Field(description="arrays used, copies included")
    cells: int = Field(description="cells used, copies included")
    cores: list[int] = Field(description="cores holding its arrays, sorted")
    dac: DacRecord | None = Field(description="stored input DAC setting, if calibrated")


class DigitalOpCount(Record):
    kind: str = Field(description="the op's name without 'aten.' and overload (e.g. "
                      "'layer_norm'); a matmul of two activations is 'matmul (activation x "
                      "activation)'")
    count: int = Field(description="nodes of this kind the digital periphery runs")


class TiedWeight(Record):
    weight: str = Field(description="the get_attr node of the weight the layers share")
    layers: list[str] = Field(description="crossbar layers that read it, each programmed on "
                              "its own tiles")
    digital: list[str] = Field(description="stored digital tensors with the same values (e.g. "
                               "the input embedding tied to an output layer), read by digital ops")


class LayoutSummary(Record):
    """``neftc inspect --json`` (``neftc compile --json`` adds ``output``)."""

    target: str
    array: list[int] = Field(description="[rows, cols] of one array")
    source: str = Field(description="the model file compiled")
    target_overrides: list[str]
    dac_calibration: DacCalibrationRecord | None
    layers: list[LayerSummary]
    totals: SummaryRecord
    placement: PlacementRecord
    cost: CostEstimate
    digital_ops: list[DigitalOpCount] = Field(description="what the digital periphery runs, "
                                              "per op kind, most frequent first")
    tied_weights: list[TiedWeight] = Field(description="weights read by more than one crossbar "
                                           "layer (programmed once per layer) or also by a "
                                           "digital op (stored twice)")


# ------------------------------------------------------------------------------ neftc program


class ArrayShape(Record):
    rows: int
    cols: int


class ProgrammedArray(Record):
    core: int
    array: int
    layer: str
    programmed_cells: int


class LayerDac(DacRecord):
    """A layer's input DAC setting: the layout's ``layers[i].dac`` and the layer's name."""

    layer: str


class ProgrammingManifest(Record):
    """``manifest.json`` of ``neftc program`` (see docs/programming.md)."""

    format: Literal["neftc-programming"]
    version: Literal[1]
    target: str
    layout_sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                               description="SHA-256 of the layout.json programmed")
    array: ArrayShape
    levels: int = Field(description="conductance levels per cell")
    level_conductance_us: list[float] = Field(description="target conductance of each level")
    write_verify_tolerance_us: float
    write_verify_tolerance_rel: float
    arrays: list[ProgrammedArray]
    dac_calibration: DacCalibrationRecord | None
    dac: list[LayerDac] = Field(description="empty without a DAC calibration")
    files: dict[str, str] = Field(description="file -> SHA-256")


# ------------------------------------------------------------------------------ neftc demo


class DemoMethod(Record):
    layout: str
    fine_tune_seconds: float
    quantized_accuracy_ideal_periphery: float
    arrays_used: int
    verify: VerifyRecord


class DemoRecord(Record):
    """``demo.json`` of ``neftc demo``."""

    format: Literal["neftc-demo"]
    version: Literal[1]
    arch: str
    dataset: str
    train_samples: int
    test_samples: int
    split: str
    epochs: int
    seed: int
    target: str
    train_sigma: float
    neft_epochs: int
    sigmas: list[float]
    trials: int
    float_accuracy: float
    methods: dict[str, DemoMethod] = Field(description="baseline, nit, ovf, irs")


#: docs/ file -> model.
SCHEMAS: dict[str, type[BaseModel]] = {
    "verify.schema.json": VerifyRecord,
    "summary.schema.json": LayoutSummary,
    "cost.schema.json": CostEstimate,
    "programming.schema.json": ProgrammingManifest,
    "demo.schema.json": DemoRecord,
}


def schema_text(model: type[BaseModel]) -> str:
    """A model's JSON Schema as stored in ``docs/``."""
    return json.dumps(model.model_json_schema(), indent=2) + "\n"


def write_schemas(docs: str | Path = "docs") -> None:
    """(Re)write every ``docs/*.schema.json`` of ``SCHEMAS``."""
    for name, model in SCHEMAS.items():
        (Path(docs) / name).write_text(schema_text(model))
