"""The layout document (``layout.json``): a versioned pydantic schema.

The JSON Schema exported from these models is in ``docs/layout.schema.json``; the prose reference,
with the sidecar formats, is ``docs/layout.md``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from neftc.targets.spec import TargetSpec

LAYOUT_FORMAT = "neftc-layout"
LAYOUT_VERSION = 4
#: Older versions ``load_layout`` still reads, converting them (``neftc.format.upgrade``).
READABLE_VERSIONS = (2, 3, 4)

LAYOUT_FILE = "layout.json"
LEVELS_FILE = "levels.bin"
TENSORS_FILE = "tensors.bin"
CHECKSUMS_FILE = "SHA256SUMS"
REPORT_FILE = "report.txt"
#: A tied weight's crossbar copy is the tensor '<digital tensor's graph target>_crossbar'
#: (``passes/crossbar_weights.py`` names it, ``neftc inspect`` pairs the two).
CROSSBAR_COPY_SUFFIX = "_crossbar"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileRecord(_Strict):
    """A binary sidecar file of the layout directory."""

    path: str = Field(description="file name, relative to the layout directory")
    nbytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SourceRecord(_Strict):
    path: str = Field(description="the model file as given to neftc compile")
    sha256: str
    kind: Literal["exported-program", "state-dict", "pickled-module", "module"]
    arch: str | None = None


class CompileOptions(_Strict):
    per_channel: bool
    calibration: Literal["max-abs", "percentile"]
    fold_bn: bool
    placement: Literal["in-order", "dataflow"]
    replicate: bool = True
    neft: NeftRecord | None = None
    target_overrides: list[str] = Field(
        default_factory=list, description="the --set overrides applied to the target, as given "
        "('noise.sigma_rel=0.15'); the target record already holds their values")
    pipeline: str | None = Field(
        default=None, description="the compile pipeline as pass specs, e.g. 'normalize{fold-bn="
        "false},quantize{per-channel=true calibration=max-abs percentile=99.99},bit-slice,"
        "map-tiles,place{...}' (every option written; neftc compile --pipeline takes it back). "
        "NeFT's training passes, which run after normalize when 'neft' is set, are not in it. "
        "Absent in layouts written before neftc recorded it; per_channel, calibration, fold_bn, "
        "placement and replicate repeat the options of its passes for older readers")


class AutoCandidateRecord(_Strict):
    """One ``--neft auto`` candidate and its validation score."""

    settings: str = Field(description="the candidate's mode and options, in words")
    train_sigma: float
    validation_accuracy: float = Field(description="mean over the simulated chips, on the "
                                       "validation split carved from the training data")


class AutoRecord(_Strict):
    """How ``--neft auto`` chose the recipe (``mode`` etc. of the record are its choice)."""

    deploy_sigma: float = Field(description="the sigma the candidates were scored at")
    epochs_per_candidate: int
    chips: int = Field(description="simulated chips per candidate (weight-level equivalent of "
                       "the cell noise, the same chips for every candidate)")
    validation_fraction: float
    candidates: list[AutoCandidateRecord]
    chosen: str


class NeftRecord(_Strict):
    """How the weights were fine-tuned with NeFT before mapping (absent: not fine-tuned)."""

    # Only what the same inputs reproduce: no wall-clock time (neftc compile prints it), so
    # compiling twice gives the same bytes.

    mode: Literal["ovf", "irs", "ovf+irs", "nit", "none"]
    data: str
    epochs: int
    sigma: float = Field(description="training device variation, relative to the cell range")
    beta: float
    lr: float
    batch_size: int
    seed: int
    noise: Literal["cell", "paper"]
    final_loss: float = Field(description="the mode's objective, mean over the last epoch")
    # Recorded since issue 13; absent in older layouts (their values were these defaults).
    temperature: float | None = Field(
        default=None, description="the loss temperature T used (the loss divides the combined "
        "logits by T); absent in older layouts: N + 1 for ovf/irs, 1 for nit/none")
    sigma_schedule: Literal["constant", "ramp"] = "constant"
    bn_stats: Literal["frozen", "train"] = Field(
        default="frozen", description="BatchNorm statistics during fine-tuning: frozen "
        "(deployed statistics) or train (batch statistics, running statistics updated under "
        "the training noise)")
    scale_gradient: bool | None = Field(
        default=None, description="the training noise's std carried the gradient of the "
        "quantisation scale; absent in older layouts (false: a constant std)")
    auto: AutoRecord | None = Field(default=None, description="--neft auto: the candidates "
                                    "and the choice; absent otherwise")
    final_ce: float | None = Field(
        default=None, description="plain cross-entropy of the noisy backbone's logits at "
        "temperature 1, mean over the last epoch: comparable across modes")
    t_inference_s: float | None = Field(
        default=None, gt=0, description="--t-inference: the training noise included the "
        "target's device effects at this time after programming; absent: at the drift model's "
        "reference read")


class TensorRecord(_Strict):
    """A digital tensor (bias, BatchNorm statistics, constants) stored in ``tensors.bin``."""

    name: str
    dtype: Literal["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8",
                   "bool"]
    shape: list[int]
    offset: int = Field(ge=0, description="byte offset in tensors.bin (little-endian, C order)")
    nbytes: int = Field(ge=0)


class ConvRecord(_Strict):
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int = Field(ge=1)
    kernel: list[int]


class QuantRecord(_Strict):
    bits: int = Field(ge=1)
    qmax: int = Field(ge=1)
    per_channel: bool
    scales: list[float] = Field(description="one per weight column (output channel): w = q * scale")


class SlicingRecord(_Strict):
    cell_bits: int = Field(ge=1)
    slices: int = Field(ge=1, description="S: cells per weight column and polarity, LSB first")
    polarities: int = Field(ge=1, le=2, description="P: 2 differential (+, -), 1 offset")
    encoding: Literal["differential", "offset"]
    offset: int = Field(ge=0, description="added to q before slicing (offset encoding), else 0")


class TileRecord(_Strict):
    """One programmed array: a block of the layer's physical matrix."""

    index: int = Field(ge=0, description="tile index inside the layer, row tile major")
    row_tile: int = Field(ge=0)
    col_tile: int = Field(ge=0)
    row_start: int = Field(ge=0, description="first matrix row (wordline input index)")
    row_count: int = Field(ge=1)
    col_start: int = Field(ge=0, description="first physical column of the layer")
    col_count: int = Field(ge=1)
    core: int = Field(ge=0)
    array: int = Field(ge=0, description="array index inside the core")
    levels_offset: int = Field(
        ge=0, description="byte offset in levels.bin of this tile's uint8 [row_count, col_count]"
    )
    replicas: list[tuple[int, int]] = Field(
        default_factory=list, description="(core, array) of each pipeline copy of this tile: "
        "programmed with the same levels")


class DacRecord(_Strict):
    """The input DAC setting of one layer: ``x_int = clamp(round(x / scale), lo, max_int)`` with
    ``max_int = 2**(bits-1) - 1`` and ``lo = -max_int`` (signed) or ``max_int = 2**bits - 1``,
    ``lo = 0`` (unsigned)."""

    scale: float = Field(gt=0, description="input units per DAC step")
    signed: bool
    bits: int = Field(ge=1, le=32)


class DacCalibrationRecord(_Strict):
    """Where the layers' DAC settings (``layers[i].dac``) come from."""

    method: Literal["max-abs"] = "max-abs"
    data: str = Field(description="the data set whose activations set the ranges")
    samples: int = Field(ge=1, description="samples run through the noise-free network")


class LayerRecord(_Strict):
    """One crossbar-mapped layer."""

    name: str
    node: str = Field(description="the graph node that computes this layer")
    op: Literal["linear", "conv1d", "conv2d"]
    weight_shape: list[int]
    matrix_rows: int = Field(ge=1, description="wordlines: C_in/groups * prod(kernel)")
    matrix_cols: int = Field(ge=1, description="weight columns: C_out")
    conv: ConvRecord | None = None
    bias: str | None = Field(default=None, description="name of the bias tensor, if any")
    quant: QuantRecord
    slicing: SlicingRecord
    positions: int = Field(ge=1, description="input vectors per sample (conv output positions)")
    replication: int = Field(ge=1, description="copies of every tile (1 = no replica)")
    tiles: list[TileRecord]
    dac: DacRecord | None = Field(default=None, description="input DAC setting used for "
                                  "sign-off (absent: not calibrated)")


class GraphNode(_Strict):
    """One node of the network: the crossbar ops and the digital ops between them."""

    name: str
    op: Literal["placeholder", "get_attr", "call_function", "output"]
    target: str = Field(description="ATen op ('aten.relu.default'), 'getitem', or attribute name")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    layer: str | None = Field(default=None, description="set on crossbar nodes and their weights")


InputDtype = Literal["float32", "int64", "int32", "bool"]


class InputRecord(_Strict):
    """One input of the network, in the order the graph's placeholders take them."""

    name: str = Field(description="the name of the placeholder node that takes this input")
    dtype: InputDtype = Field(description="float inputs are activations; integer and bool inputs "
                              "(token ids, masks) reach only digital ops, unquantised")
    shape: list[int] = Field(description="example shape, batch first; every input has the "
                             "same batch")
    low: int | None = Field(default=None, description="integer inputs: the smallest valid value "
                            "(null: float or bool input)")
    high: int | None = Field(default=None, description="integer inputs: one past the largest "
                             "valid value, low <= v < high (token ids: the embedding's rows)")


class GraphRecord(_Strict):
    inputs: list[InputRecord] = Field(
        min_length=1, description="the network's inputs, in placeholder order (a version 2 "
        "layout had one float32 input, graph.input_shape)")
    nodes: list[GraphNode]

    @property
    def input_shape(self) -> list[int]:
        """The first input's example shape, batch first (version 2's ``input_shape``)."""
        return list(self.inputs[0].shape)


class PlacementRecord(_Strict):
    strategy: Literal["in-order", "dataflow"]
    core_links: str
    byte_hops: float = Field(description="bytes x core-to-core hops per inference, this placement")
    in_order_byte_hops: float = Field(description="the same for naive in-order placement")
    bytes_exchanged: int = Field(description="bytes exchanged between tiles per inference")


class SummaryRecord(_Strict):
    layers: int
    weights: int
    arrays_used: int = Field(description="arrays holding a tile or a replica")
    replica_arrays: int
    arrays_available: int
    cells_used: int
    cells_in_used_arrays: int
    utilization: float = Field(description="cells_used / cells_in_used_arrays")


class PeripheryRecord(_Strict):
    input_bits: int
    dac_bits_per_cycle: int
    adc_bits: int
    adcs_per_array: int


class LayoutDoc(_Strict):
    """The whole ``layout.json`` document."""

    format: Literal["neftc-layout"]
    version: Literal[4]
    neftc_version: str
    source: SourceRecord
    target: TargetSpec
    options: CompileOptions
    periphery: PeripheryRecord
    files: dict[Literal["levels", "tensors"], FileRecord]
    tensors: list[TensorRecord]
    layers: list[LayerRecord]
    graph: GraphRecord
    placement: PlacementRecord
    summary: SummaryRecord
    dac_calibration: DacCalibrationRecord | None = None
