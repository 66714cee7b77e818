"""The compile driver: model file (or module) -> passes -> layout directory."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from neftc.driver.emit import build_layout
from neftc.errors import PassError
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
from neftc.ir.node_info import crossbar_nodes
from neftc.ir.pass_manager import PassContext, PassManager
from neftc.neft.finetune import DEFAULT_BETA, TrainLog
from neftc.neft.pipeline import NeftSettings, run_neft
from neftc.passes import default_pipeline
from neftc.targets.spec import TargetSpec


@dataclass(frozen=True)
class CompileSettings:
    per_channel: bool = False
    calibration: str = "max-abs"
    fold_bn: bool = False
    dump_after_each: Path | None = None
    neft: NeftSettings | None = None  # fine-tune with NeFT before quantising
    progress: bool = False
    placement: str = "dataflow"
    replicate: bool = True
    target_overrides: tuple[str, ...] = ()  # the --set overrides, recorded in the layout
    dac_data: str | None = None  # set the layers' DAC ranges from this data after compiling
    dac_samples: int = 512

    def neft_settings(self) -> NeftSettings | None:
        """The NeFT settings with this compile's quantisation options: fine-tuning trains
        against the noise of the chip this compile produces (its scales and integer weights)."""
        if self.neft is None:
            return None
        return replace(self.neft, per_channel=self.per_channel,
                       calibration=self.calibration)  # type: ignore[arg-type]

    def options(self, target: TargetSpec, log: TrainLog | None) -> CompileOptions:
        neft = None
        if self.neft is not None and log is not None:
            n = self.neft
            neft = NeftRecord(
                mode=n.mode, data=n.data, epochs=n.epochs,
                sigma=target.noise.sigma_rel if n.sigma is None else n.sigma,
                beta=DEFAULT_BETA[n.mode] if n.beta is None else n.beta, lr=n.lr,
                batch_size=n.batch_size, seed=n.seed, noise=n.noise,
                final_loss=log.losses[-1] if log.losses else float("nan"))
        return CompileOptions(per_channel=self.per_channel,
                              calibration=self.calibration,  # type: ignore[arg-type]
                              fold_bn=self.fold_bn, placement=self.placement,  # type: ignore
                              replicate=self.replicate, neft=neft,
                              target_overrides=list(self.target_overrides))


@dataclass(frozen=True)
class CompileResult:
    doc: LayoutDoc
    gm: torch.fx.GraphModule  # the compiled graph; it computes the fake-quantised model
    out_dir: Path | None
    neft_log: TrainLog | None = None  # NeFT fine-tuning's losses and wall-clock time (not in doc)


def _compile_loaded(loaded: LoadedModel, target: TargetSpec, settings: CompileSettings,
                    out_dir: Path | None,
                    on_pass: Callable[[str, bool], None] | None) -> CompileResult:
    dac_data = None
    if settings.dac_data is not None:  # read the data first: a bad --dac-data fails fast
        from neftc.datasets.spec import load_dataset

        dac_data = load_dataset(settings.dac_data)
    ctx = PassContext(target=target, example_input=loaded.example_input)
    normalize, *mapping = default_pipeline(fold_bn=settings.fold_bn,
                                           per_channel=settings.per_channel,
                                           calibration=settings.calibration,
                                           placement=settings.placement,
                                           replicate=settings.replicate)
    dump = settings.dump_after_each
    gm = PassManager([normalize], dump_dir=dump, on_pass=on_pass).run(loaded.gm, ctx)
    log = None
    neft = settings.neft_settings()
    if neft is not None:
        gm, log = run_neft(gm, ctx, neft, dump_dir=dump, on_pass=on_pass,
                           progress=settings.progress)
    gm = PassManager(mapping, dump_dir=dump, on_pass=on_pass).run(gm, ctx)
    if not crossbar_nodes(gm):
        raise PassError("the model has no crossbar-mappable op (Linear, Conv1d/2d or a matmul "
                        "with a parameter); there is nothing to put on the chip")
    source = SourceRecord(path=loaded.source, sha256=loaded.sha256, kind=loaded.kind,
                          arch=loaded.arch)
    doc, levels, tensors = build_layout(gm, target, loaded.example_input, source,
                                        settings.options(target, log))
    if dac_data is not None:  # the DAC ranges sign-off and programming use (neftc calibrate)
        from neftc.flow.calibration import calibrate_doc
        from neftc.format.reader import Layout

        doc, _, _ = calibrate_doc(Layout(Path(out_dir or "."), doc, levels, tensors), dac_data,
                                  str(settings.dac_data), settings.dac_samples)
    if out_dir is not None:
        from neftc.flow.report import write_layout_reports

        write_layout(Path(out_dir), doc, levels, tensors,
                     extras=lambda tmp: write_layout_reports(tmp, doc))
    return CompileResult(doc, gm, out_dir, log)


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
    source_name: str | None = None,
) -> CompileResult:
    """Compile a model file for ``target``; write the layout to ``out_dir`` when given.

    ``source_name`` replaces the model path recorded in the layout (default: ``path``).
    """
    loaded = load_model(path, arch=arch, input_shape=input_shape, trust_model=trust_model)
    if source_name is not None:
        loaded = replace(loaded, source=source_name)
    return _compile_loaded(loaded, target, settings, Path(out_dir) if out_dir else None, on_pass)


def compile_module(
    module: nn.Module,
    example_input: torch.Tensor,
    target: TargetSpec,
    out_dir: str | Path | None = None,
    *,
    settings: CompileSettings = CompileSettings(),
) -> CompileResult:
    """Compile an in-memory module (it is copied, never modified)."""
    module = copy.deepcopy(module).eval()
    gm = trace_module(module, example_input)
    loaded = LoadedModel(gm, example_input, f"<{type(module).__name__}>", "0" * 64, "module",
                         type(module).__name__)
    return _compile_loaded(loaded, target, settings, Path(out_dir) if out_dir else None, None)


__all__ = ["CompileResult", "CompileSettings", "compile_model", "compile_module", "file_sha256"]
