"""The work behind ``neftc finetune`` and ``neftc train``.

With several processes (``group``: torchrun or ``--workers``) every rank trains (DDP,
``neftc.neft.train``) and only rank 0 measures, writes the model file and returns the summary;
the others write nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.fx
from torch import nn

from neftc.atomic import atomic_file
from neftc.datasets.base import Dataset
from neftc.datasets.fit import to_float
from neftc.datasets.spec import load_dataset
from neftc.distributed import SINGLE, Group
from neftc.errors import DataError, NeftcError
from neftc.frontend.loader import load_model
from neftc.frontend.trace import export_dynamic_batch, trace_module
from neftc.frontend.zoo import build, zoo
from neftc.ir.pass_manager import PassContext, PassManager
from neftc.neft.auto import run_neft_resolved
from neftc.neft.pipeline import AUTO, NeftSettings, loss_summary, num_outputs, training_data
from neftc.neft.train import TrainLog, accuracy, train_classifier
from neftc.passes import Normalize
from neftc.targets.spec import TargetSpec


def save_program(module: nn.Module, example: torch.Tensor | Sequence[torch.Tensor],
                 path: Path) -> None:
    """Export ``module`` (batch dimension dynamic; ``example``: one tensor per input) and save
    it atomically with torch.export."""
    program = export_dynamic_batch(module, example)
    with atomic_file(Path(path)) as tmp:
        torch.export.save(program, tmp)


def finetune_file(model: Path, target: TargetSpec, settings: NeftSettings, output: Path, *,
                  arch: str | None = None, input_shape: tuple[int, ...] | None = None,
                  trust_model: bool = False, progress: bool = True,
                  group: Group = SINGLE) -> FinetuneResult:
    """Fine-tune a model file with NeFT and save the tuned model to ``output`` (rank 0 only).
    Rank 0 also measures the model's test accuracy (the data's test split, noise-free float
    model) before and after, as ``neftc train`` reports it."""
    loaded = load_model(model, arch=arch, input_shape=input_shape, trust_model=trust_model)
    ctx = PassContext(target=target, example=loaded.example_inputs, inputs=loaded.inputs)
    gm = PassManager([Normalize()]).run(loaded.gm, ctx)
    test = None
    before = after = 0.0
    if group.is_main:
        test = training_data(settings, ctx, num_outputs(gm, ctx.example_inputs)).test
        before = accuracy(gm, test)  # measured before NeFT, which tunes the weights in place
    gm, log, _ = run_neft_resolved(gm, ctx, settings, progress=progress, group=group)
    if group.is_main:
        assert test is not None
        after = accuracy(gm, test)
        save_program(gm, loaded.example_inputs, output)
    return FinetuneResult(log, before, after)


@dataclass(frozen=True)
class FinetuneResult:
    """What ``finetune_file`` did: the training log and the test accuracy before and after
    (0 on ranks other than 0)."""

    log: TrainLog
    accuracy_before: float
    accuracy_after: float


def _zoo_data(arch: str, data: Dataset, spec: str) -> tuple[Dataset, int | None]:
    """The data as the zoo model takes it, and the token count for a text model: token ids
    ([N, T] integers) train the text model ``bow`` only (its one input: other arrays such as
    an attention mask are not used); integer images are fed as float32."""
    entry = zoo().get(arch)
    text_model = entry is not None and entry.vocab_key is not None
    tokens = not data.train.x.is_floating_point() and data.train.x.dim() == 2
    if tokens != text_model:
        what = "token ids (integer x of shape [N, T])" if tokens else "no token ids"
        fix = "train 'bow', the zoo's text model" if tokens else "train an image model"
        raise DataError(f"data '{spec}' holds {what}, but '{arch}' is "
                        f"{'an image' if tokens else 'a text'} model; {fix}")
    if tokens:
        vocab = int(max(data.train.x.max(), data.test.x.max())) + 1
        drop = {"extras": {}}
        return replace(data, train=replace(data.train, **drop),
                       test=replace(data.test, **drop)), vocab
    if not data.train.x.is_floating_point():
        data = to_float(data)  # integer images (e.g. 0..255 in an .npz)
    return data, None


def train_zoo_model(arch: str, data_spec: str, output: Path, *, epochs: int, lr: float,
                    batch_size: int, seed: int, device: str, neft: NeftSettings | None,
                    target: TargetSpec, progress: bool = True, from_scratch: bool = False,
                    group: Group = SINGLE) -> str:
    """Train a zoo model and save it; with ``neft``, fine-tune it with NeFT after plain training,
    or, with ``from_scratch``, train the new model with NeFT from the start (``epochs``, ``lr``,
    ``batch_size`` replace the settings' fine-tuning ones; BatchNorm statistics learned under the
    noise: a new model has none to freeze; the loss temperature, if not set, the mode's default
    from scratch). ``group``: the processes that train together; only rank 0 measures the test
    accuracy, writes ``output`` and returns the summary (the others return an empty string)."""
    data = load_dataset(data_spec)
    if len(data.train) == 0:
        raise DataError(f"data '{data_spec}' has no training split")
    data, vocab = _zoo_data(arch, data, data_spec)
    torch.manual_seed(seed)  # parameter initialisation
    model = build(arch, data.input_shape, data.num_classes, vocab).train().to(device)
    example = data.test.x[:1]
    if neft is not None and from_scratch and neft.mode == AUTO:
        raise NeftcError("--neft auto chooses a fine-tuning recipe for a trained model; train "
                         "from scratch with a mode (nit, ovf, irs, ovf+irs), or drop "
                         "--from-scratch")
    if neft is not None and from_scratch:
        scratch = replace(neft, epochs=epochs, lr=lr, batch_size=batch_size, bn_stats="train",
                          temperature=neft.resolved_temperature(from_scratch=True))
        gm, log = _neft_stage(model.to("cpu").eval(), example, scratch, target, progress, group)
        if not group.is_main:
            return ""
        save_program(gm, example, output)
        return "\n".join([
            f"trained {arch} from scratch with NeFT {neft.mode} on {data.name} "
            f"({len(data.train)} samples, {epochs} epochs, {log.seconds:.1f} s; "
            f"{loss_summary(neft.mode, log)}): test accuracy "
            f"{100 * accuracy(gm, data.test):.2f} %", f"wrote {output}"])
    train = data.train
    if device != "cpu":
        train = type(train)(train.x.to(device), train.y.to(device))
    model = train_classifier(model, train, epochs=epochs, lr=lr, batch_size=batch_size,
                             seed=seed, progress=progress, desc=f"train {arch}",
                             group=group).to("cpu")
    # measured before NeFT, which tunes the model's own weights
    plain = accuracy(model, data.test) if group.is_main else 0.0
    if neft is not None:
        gm, log = _neft_stage(model, example, neft, target, progress, group)
    if not group.is_main:
        return ""
    lines = [f"trained {arch} on {data.name} ({len(data.train)} samples, {epochs} epochs): "
             f"test accuracy {100 * plain:.2f} %"]
    if neft is not None:
        lines += log.notes
        mode = log.mode or neft.mode
        lines.append(f"fine-tuned with NeFT {mode} ({neft.epochs} epochs, "
                     f"{log.seconds:.1f} s; {loss_summary(mode, log)}): test accuracy "
                     f"{100 * accuracy(gm, data.test):.2f} %")
        save_program(gm, example, output)
    else:
        save_program(model.eval(), example, output)
    lines.append(f"wrote {output}")
    return "\n".join(lines)


def _neft_stage(model: nn.Module, example: torch.Tensor, neft: NeftSettings, target: TargetSpec,
                progress: bool, group: Group) -> tuple[torch.fx.GraphModule, TrainLog]:
    """NeFT on the normalised graph of an eager ``model`` (in eval form): the deployable graph
    and the training log."""
    ctx = PassContext(target=target, example=example)
    gm = PassManager([Normalize()]).run(trace_module(model, example), ctx)
    gm, log, _ = run_neft_resolved(gm, ctx, neft, progress=progress, group=group)
    return gm, log
