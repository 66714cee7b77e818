"""The compile driver: model file (or module) -> passes -> layout directory.

The pipeline (``CompileSettings.pipeline``) is a list of pass objects; with NeFT, the training
passes (built around the pipeline's own ``quantize`` pass) run after the pass that normalises the
graph. The whole order, training passes included, is checked before any pass runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from neftc.distributed import SINGLE, Group
from neftc.driver.emit import build_layout
from neftc.errors import NeftcError, PassError, PassOrderError
from neftc.format.schema import (
    CompileOptions,
    LayoutDoc,
    NeftRecord,
    SourceRecord,
)
from neftc.format.writer import write_layout
from neftc.frontend.loader import LoadedModel, file_sha256, load_model
from neftc.frontend.trace import trace_module
from neftc.frontend.zoo import InputShape
from neftc.ir.facts import INITIAL_FACTS, Fact
from neftc.ir.instruments import DumpGraphs, OnPass
from neftc.ir.node_info import crossbar_nodes
from neftc.ir.pass_manager import PassContext, PassInstrument, PassManager, check_order
from neftc.ir.pass_spec import pipeline_text
from neftc.ir.quantization import Calibration
from neftc.neft.auto import AutoChoice, auto_record, resolve
from neftc.neft.finetune import TrainLog
from neftc.neft.pipeline import (
    AUTO,
    NeftSettings,
    num_outputs,
    run_training_passes,
    training_passes,
)
from neftc.passes import PASSES, Normalize, Place, Quantize, StripTraining, default_pipeline
from neftc.targets.spec import TargetSpec


@dataclass(frozen=True)
class CompileSettings:
    """How to compile. The pass options live on the pipeline's pass objects (``pipeline``, e.g.
    ``parse_pipeline("normalize,quantize{per-channel=true},bit-slice,map-tiles,place")``); NeFT
    fine-tuning (``neft``) trains against the noise of the pipeline's own ``quantize`` pass.

    ``CompileSettings.with_options(per_channel=True, ...)`` builds the default pipeline with those
    pass options; the options are read back from the passes (``settings.quantize``), never
    stored twice.
    """

    pipeline: tuple[Any, ...] = ()  # empty: the default pipeline (with the shortcuts' options)
    dump_after_each: Path | None = None
    neft: NeftSettings | None = None  # fine-tune with NeFT after normalize, before quantize
    progress: bool = False
    target_overrides: tuple[str, ...] = ()  # the --set overrides, recorded in the layout
    dac_data: str | None = None  # set the layers' DAC ranges from this data after compiling
    dac_samples: int = 512

    def __post_init__(self) -> None:
        if not self.pipeline:
            object.__setattr__(self, "pipeline", tuple(default_pipeline()))

    @classmethod
    def with_options(cls, *, per_channel: bool | None = None,
                     calibration: Calibration | None = None, fold_bn: bool | None = None,
                     placement: Literal["dataflow", "in-order"] | None = None,
                     replicate: bool | None = None, **settings: Any) -> CompileSettings:
        """Settings whose pipeline is the default one with these pass options (None: the pass's
        default); ``settings`` are the other fields (``neft``, ``progress``, ...)."""
        if "pipeline" in settings:
            raise NeftcError("CompileSettings.with_options builds the pipeline; set the options "
                             "on the passes of your own pipeline instead")
        options = {key: value for key, value in (
            ("per_channel", per_channel), ("calibration", calibration), ("fold_bn", fold_bn),
            ("placement", placement), ("replicate", replicate)) if value is not None}
        return cls(pipeline=tuple(default_pipeline(**options)), **settings)

    @property
    def quantize(self) -> Quantize:
        """The pipeline's quantize pass: the chip's quantisation, which NeFT trains for."""
        return _only(self.pipeline, Quantize)

    def options(self, target: TargetSpec, log: TrainLog | None,
                used: NeftSettings | None = None, auto: AutoChoice | None = None
                ) -> CompileOptions:
        """The layout's options; ``used``: the NeFT settings fine-tuning ran with (``--neft
        auto``'s choice; default ``self.neft``), ``auto``: the choice's scores."""
        neft = None
        if self.neft is not None and log is not None:
            n = used or self.neft
            neft = NeftRecord(
                mode=n.mode, data=n.data, epochs=n.epochs,
                sigma=target.noise.sigma_rel if n.sigma is None else n.sigma,
                beta=n.resolved_beta(), lr=n.lr,
                batch_size=n.batch_size, seed=n.seed, noise=n.noise,
                final_loss=log.losses[-1] if log.losses else float("nan"),
                temperature=n.resolved_temperature(), sigma_schedule=n.sigma_schedule,
                bn_stats=n.bn_stats, scale_gradient=n.scale_gradient,
                final_ce=log.ce_losses[-1] if log.ce_losses else float("nan"),
                auto=None if auto is None else auto_record(auto), t_inference_s=n.t_inference_s)
        normalize, place = _only(self.pipeline, Normalize), _only(self.pipeline, Place)
        return CompileOptions(per_channel=self.quantize.per_channel,
                              calibration=self.quantize.calibration, fold_bn=normalize.fold_bn,
                              placement=place.strategy, replicate=place.replicate, neft=neft,
                              target_overrides=list(self.target_overrides),
                              pipeline=pipeline_text(self.pipeline))


P = TypeVar("P")


def _only(pipeline: Sequence[Any], kind: type[P]) -> P:
    found = [p for p in pipeline if isinstance(p, kind)]
    if len(found) != 1:
        name = kind.name  # type: ignore[attr-defined]
        raise PassOrderError(f"the pipeline '{pipeline_text(pipeline)}' has {len(found)} "
                             f"'{name}' passes; a compile needs exactly one")
    return found[0]


def _stages(loaded: LoadedModel, settings: CompileSettings,
            target: TargetSpec) -> tuple[list[Any], list[Any], list[Any]]:
    """The pipeline up to the pass that normalises the graph, NeFT's training passes (empty
    without NeFT), and the rest; the whole order checked (strip-training included)."""
    pipeline = list(settings.pipeline)
    cut = next((i + 1 for i, p in enumerate(pipeline) if Fact.NORMALIZED in p.provides), 0)
    head, tail = pipeline[:cut], pipeline[cut:]
    training: list[Any] = []
    strip: list[Any] = []
    if settings.neft is not None:
        settings.neft.validate()
        _check_chip(settings.neft, settings.quantize)
        classes = num_outputs(loaded.gm, loaded.example_inputs)
        # --neft auto picks its mode after normalize; every mode's passes have one order.
        checked = replace(settings.neft, mode="nit") if settings.neft.mode == AUTO \
            else settings.neft
        training = training_passes(checked, target, classes, settings.quantize)
        strip = [StripTraining()]
    check_order([*head, *training, *strip, *tail], INITIAL_FACTS, PASSES.values())
    settings.options(target, None)  # a compile needs one normalize, quantize and place
    return head, training, tail


def _check_chip(neft: NeftSettings, quantize: Quantize) -> None:
    """NeFT in a compile trains for the pipeline's quantize pass; settings that name another
    chip are refused rather than silently overridden."""
    for option, value in (("per_channel", neft.per_channel), ("calibration", neft.calibration)):
        if value is not None and value != getattr(quantize, option):
            raise NeftcError(f"NeftSettings.{option}={value!r} but the compile pipeline's "
                             f"quantize pass has {option}={getattr(quantize, option)!r}: a "
                             "compile trains for its own chip; leave NeftSettings."
                             f"{option} unset (None) or set the pass's option")


@dataclass(frozen=True)
class CompileResult:
    doc: LayoutDoc
    gm: torch.fx.GraphModule  # the compiled graph; it computes the fake-quantised model
    out_dir: Path | None
    neft_log: TrainLog | None = None  # NeFT fine-tuning's losses and wall-clock time (not in doc)
    notes: tuple[str, ...] = ()  # what loading decided (output leaf chosen, batch made dynamic)


def _compile_loaded(loaded: LoadedModel, target: TargetSpec, settings: CompileSettings,
                    out_dir: Path | None, instruments: Sequence[PassInstrument],
                    group: Group = SINGLE) -> CompileResult:
    if not group.is_main:  # the other processes of a distributed NeFT train, and write nothing
        out_dir = None
    dac_data = None
    # read the data first: a bad --dac-data fails fast (rank 0 only: it alone sets the ranges)
    if settings.dac_data is not None and group.is_main:
        from neftc.datasets.spec import load_dataset

        dac_data = load_dataset(settings.dac_data)
    ctx = PassContext(target=target, example=loaded.example_inputs, inputs=loaded.inputs)
    head, training, tail = _stages(loaded, settings, target)
    gm = PassManager(head, instruments).run(loaded.gm, ctx)
    log = used = auto = None
    if settings.neft is not None:
        on_pass = next((i.callback for i in instruments if isinstance(i, OnPass)), None)
        used, auto = resolve(gm, ctx, settings.neft, settings.quantize,
                             report=lambda line: on_pass(line, True) if on_pass else None,
                             group=group)
        if auto is not None:
            training = training_passes(used, target, num_outputs(gm, ctx.example_inputs),
                                       settings.quantize)
        gm, log = run_training_passes(gm, ctx, used, training, instruments=instruments,
                                      on_pass=on_pass, progress=settings.progress,
                                      group=group)
    gm = PassManager(tail, instruments).run(gm, ctx)
    if not crossbar_nodes(gm):
        raise PassError("the model has no crossbar-mappable op (Linear, Conv1d/2d or a matmul "
                        "with a parameter); there is nothing to put on the chip")
    source = SourceRecord(path=loaded.source, sha256=loaded.sha256, kind=loaded.kind,
                          arch=loaded.arch)
    doc, levels, tensors = build_layout(gm, target, loaded.example_inputs, source,
                                        settings.options(target, log, used, auto),
                                        loaded.inputs)
    if dac_data is not None:  # the DAC ranges sign-off and programming use (neftc calibrate)
        from neftc.flow.calibration import calibrate_doc
        from neftc.format.reader import Layout

        doc, _, _ = calibrate_doc(Layout(Path(out_dir or "."), doc, levels, tensors), dac_data,
                                  str(settings.dac_data), settings.dac_samples)
    if out_dir is not None:
        from neftc.flow.report import write_layout_reports

        write_layout(Path(out_dir), doc, levels, tensors)
        write_layout_reports(Path(out_dir), doc)  # after the layout is in place
    return CompileResult(doc, gm, out_dir, log, loaded.notes)


def _instruments(settings: CompileSettings, on_pass: Callable[[str, bool], None] | None,
                 instruments: Sequence[PassInstrument]) -> list[PassInstrument]:
    extra: list[PassInstrument] = []
    if settings.dump_after_each is not None:
        extra.append(DumpGraphs(Path(settings.dump_after_each)))
    if on_pass is not None:
        extra.append(OnPass(on_pass))
    return [*instruments, *extra]


def compile_model(
    path: str | Path,
    target: TargetSpec,
    out_dir: str | Path | None = None,
    *,
    arch: str | None = None,
    input_shape: InputShape | None = None,
    trust_model: bool = False,
    settings: CompileSettings = CompileSettings(),
    on_pass: Callable[[str, bool], None] | None = None,
    instruments: Sequence[PassInstrument] = (),
    source_name: str | None = None,
    group: Group = SINGLE,
) -> CompileResult:
    """Compile a model file for ``target``; write the layout to ``out_dir`` when given.

    ``on_pass(name, modified)`` is called after each pass (and after NeFT fine-tuning);
    ``instruments`` see every pass (``neftc.ir.instruments``: timings, dumps). ``source_name``
    replaces the model path recorded in the layout (default: ``path``). ``group``: the
    processes that fine-tune with NeFT together (torchrun or ``--workers``); only rank 0 sets
    the DAC ranges and writes the layout.
    """
    loaded = load_model(path, arch=arch, input_shape=input_shape, trust_model=trust_model)
    if source_name is not None:
        loaded = replace(loaded, source=source_name)
    return _compile_loaded(loaded, target, settings, Path(out_dir) if out_dir else None,
                           _instruments(settings, on_pass, instruments), group)


def compile_module(
    module: nn.Module,
    example_input: torch.Tensor,
    target: TargetSpec,
    out_dir: str | Path | None = None,
    *,
    settings: CompileSettings = CompileSettings(),
    instruments: Sequence[PassInstrument] = (),
) -> CompileResult:
    """Compile an in-memory module (it is copied, never modified)."""
    module = copy.deepcopy(module).eval()
    gm = trace_module(module, example_input)
    loaded = LoadedModel(gm, example_input, f"<{type(module).__name__}>", "0" * 64, "module",
                         type(module).__name__)
    return _compile_loaded(loaded, target, settings, Path(out_dir) if out_dir else None,
                           _instruments(settings, None, instruments))


__all__ = ["CompileResult", "CompileSettings", "compile_model", "compile_module", "file_sha256"]
