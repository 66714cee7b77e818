"""NeFT inside the compiler: inject-noise -> insert-feedback -> fine-tune -> strip-training.

The training noise is the noise of the chip the ``quantize`` pass produces: the training passes
hold that pass object and read its options from it. In a compile it is the very object of the
compile's pipeline (``neftc.driver.compiler``); outside one (``finetune``, ``train --neft``) it is
the pass ``NeftSettings.chip_quantize()`` describes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx

from neftc.bounds import (
    MAX_AUTO_CHIPS,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_IRS_TAPS,
    MAX_LR,
    MAX_SEED,
    MAX_TEMPERATURE,
    check_beta,
    check_number,
)
from neftc.datasets.base import Dataset, Split, check_compatible
from neftc.datasets.fit import fit_inputs, to_float
from neftc.datasets.spec import load_dataset
from neftc.devices import resolve_device
from neftc.distributed import SINGLE, Group
from neftc.errors import DataError, NeftcError
from neftc.ir.pass_manager import PassContext, PassInstrument, PassManager
from neftc.ir.quantization import Calibration
from neftc.neft.batchnorm import BN_STATS, BnStats
from neftc.neft.finetune import (
    DEFAULT_BATCH,
    DEFAULT_BETA,
    DEFAULT_LR,
    SIGMA_SCHEDULES,
    SigmaSchedule,
    TrainLog,
    default_temperature,
    finetune,
)
from neftc.passes.inject_noise import InjectNoise
from neftc.passes.insert_feedback import InsertFeedback, NeftMode
from neftc.passes.quantize import Quantize
from neftc.passes.strip_training import StripTraining
from neftc.targets.physics import TIME_MAX_S
from neftc.targets.spec import SIGMA_REL_MAX, TargetSpec

NEFT_MODES: tuple[NeftMode, ...] = ("ovf", "irs", "ovf+irs", "nit", "none")
#: ``--neft auto``: a mode of ``NeftSettings`` only, resolved to one of ``NEFT_MODES`` by
#: ``neftc.neft.auto.resolve`` before any training pass is built.
AUTO = "auto"


@dataclass(frozen=True)
class NeftSettings:
    mode: NeftMode
    data: str
    epochs: int = 10
    sigma: float | None = None  # training sigma; default: the target's noise.sigma_rel
    beta: float | None = None  # default: the paper's VGG-8/MNIST value for the mode
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH
    seed: int = 0
    device: str = "cpu"
    noise: Literal["cell", "paper"] = "cell"
    taps: int | tuple[str, ...] = 3
    sigma_offsets: tuple[float, ...] = (0.15, 0.10, 0.05)
    # The chip NeFT trains for when it runs outside a compile (finetune, train --neft): the
    # quantize pass's options (None: the pass's default). A compile trains for its pipeline's own
    # quantize pass, and refuses values here that disagree with it.
    per_channel: bool | None = None
    calibration: Calibration | None = None
    # Loss temperature (None: default_temperature: N + 1 with feedback, 4 for nit), the training
    # sigma's schedule over the steps, and BatchNorm's statistics while fine-tuning.
    temperature: float | None = None
    sigma_schedule: SigmaSchedule = "constant"
    bn_stats: BnStats = "train"
    # The training noise's std carries the gradient of the chip's quantisation scale
    # (WeightNoise.scale_gradient); False: a constant std, as the NeFT reference code.
    scale_gradient: bool = True
    # --neft auto's budget (neftc.neft.auto): epochs per candidate, chips per candidate.
    auto_epochs: int = 2
    auto_chips: int = 10
    # Seconds after programming the chip will be read at: the training noise includes the
    # target's drift at that time (None: the drift model's reference read, no drift).
    t_inference_s: float | None = None

    def resolved_beta(self) -> float:
        """The feedback strength used: ``beta``, or the mode's default."""
        return DEFAULT_BETA[self.mode] if self.beta is None else self.beta

    def resolved_temperature(self, from_scratch: bool = False) -> float:
        """The loss temperature used: ``temperature``, or the mode's default for its number of
        feedback terms (OVF: one per sigma offset; IRS: one per tap) and, for nit, whether a new
        model trains ``from_scratch``."""
        if self.temperature is not None:
            return self.temperature
        offsets = len(self.sigma_offsets) if self.mode in ("ovf", "ovf+irs") else 0
        taps = (self.taps if isinstance(self.taps, int) else len(self.taps)) \
            if self.mode in ("irs", "ovf+irs") else 0
        return default_temperature(self.mode, offsets + taps, from_scratch)

    def chip_quantize(self) -> Quantize:
        """The quantize pass of the chip these settings train for, outside a compile."""
        default = Quantize()
        return Quantize(per_channel=default.per_channel if self.per_channel is None
                        else self.per_channel,
                        calibration=self.calibration or default.calibration)

    def validate(self) -> None:
        if self.mode not in (*NEFT_MODES, AUTO):
            raise NeftcError(f"unknown NeFT mode '{self.mode}'; use one of "
                             f"{', '.join((*NEFT_MODES, AUTO))}")
        check_number("--epochs", self.epochs, 1, MAX_EPOCHS, integer=True)
        check_number("--batch-size", self.batch_size, 1, MAX_BATCH_SIZE, integer=True)
        check_number("--lr", self.lr, 0, MAX_LR, low_open=True)
        check_number("--seed", self.seed, 0, MAX_SEED, integer=True)
        if self.sigma is not None:
            check_number("--train-sigma", self.sigma, 0, SIGMA_REL_MAX)
        if self.beta is not None:
            check_beta("--beta", self.beta)
        check_number("--auto-epochs", self.auto_epochs, 1, MAX_EPOCHS, integer=True)
        check_number("--auto-chips", self.auto_chips, 1, MAX_AUTO_CHIPS, integer=True)
        if self.t_inference_s is not None:
            check_number("--t-inference", self.t_inference_s, 0, TIME_MAX_S, low_open=True)
        if self.temperature is not None:
            check_number("--temperature", self.temperature, 0, MAX_TEMPERATURE, low_open=True)
        if self.sigma_schedule not in SIGMA_SCHEDULES:
            raise NeftcError(f"unknown sigma schedule '{self.sigma_schedule}'; use one of "
                             f"{', '.join(SIGMA_SCHEDULES)}")
        if self.bn_stats not in BN_STATS:
            raise NeftcError(f"unknown BatchNorm statistics '{self.bn_stats}'; use one of "
                             f"{', '.join(BN_STATS)}")
        for offset in self.sigma_offsets:
            check_number("sigma_offsets", offset, 0, SIGMA_REL_MAX)
        if isinstance(self.taps, int):
            check_number("--irs-taps", self.taps, 1, MAX_IRS_TAPS, integer=True)
        if self.calibration not in (None, "max-abs", "percentile"):
            raise NeftcError(f"unknown calibration '{self.calibration}'; use max-abs or "
                             "percentile")
        resolve_device(self.device)


def num_outputs(gm: torch.fx.GraphModule, examples: tuple[torch.Tensor, ...]) -> int:
    with torch.no_grad():
        out = gm(*examples)
    while isinstance(out, (list, tuple)):
        out = out[0]
    return int(out.shape[-1])


def training_data(settings: NeftSettings, ctx: PassContext, classes: int) -> Dataset:
    """The fine-tuning data, checked against the model: against its recorded inputs (dtypes,
    shapes, token ranges; extra inputs such as an attention mask in order) when the model file
    records them, else against the example's shape."""
    data = load_dataset(settings.data)
    if ctx.inputs:
        data = fit_inputs(data, ctx.inputs)
        check_compatible(data, tuple(data.test.x.shape[1:]), classes)
    else:
        if not data.train.x.is_floating_point() and ctx.example_inputs[0].is_floating_point():
            data = to_float(data)
        check_compatible(data, tuple(ctx.example_inputs[0].shape[1:]), classes)
    if len(data.train) == 0:
        raise DataError(f"data '{settings.data}' has no training split; fine-tuning needs one "
                        "(an .npz with x,y or x_train,y_train, or the MNIST train files)")
    return data


def training_passes(settings: NeftSettings, target: TargetSpec, classes: int,
                    quantize: Quantize | None = None) -> list[Any]:
    """The passes that make a normalised graph trainable with NeFT for ``target``: inject-noise
    and insert-feedback (none for mode ``none``), with the settings' sigma and beta; their noise
    is the noise of the chip ``quantize`` produces (they hold that pass object; default:
    ``settings.chip_quantize()``)."""
    if settings.mode == "none":
        return []
    quantize = settings.chip_quantize() if quantize is None else quantize
    sigma = target.noise.sigma_rel if settings.sigma is None else settings.sigma
    beta = settings.resolved_beta()
    return [InjectNoise(sigma=sigma, mode=settings.noise, quantize=quantize,
                        scale_gradient=settings.scale_gradient,
                        t_inference_s=settings.t_inference_s),
            InsertFeedback(mode=settings.mode, beta=beta, sigma=sigma, num_classes=classes,
                           sigma_offsets=settings.sigma_offsets, taps=settings.taps,
                           noise_mode=settings.noise, seed=settings.seed, quantize=quantize,
                           t_inference_s=settings.t_inference_s)]


def loss_summary(mode: str, log: TrainLog) -> str:
    """The final epoch's losses as the CLI prints them: the mode's objective, and the noisy
    cross-entropy at temperature 1, the one comparable across modes."""
    if not log.losses:
        return "no epochs"
    return (f"final {mode} objective {log.losses[-1]:.4f}, final noisy cross-entropy "
            f"{log.ce_losses[-1]:.4f} (comparable across modes)")


def run_neft(gm: torch.fx.GraphModule, ctx: PassContext, settings: NeftSettings, *,
             quantize: Quantize | None = None, instruments: Sequence[PassInstrument] = (),
             on_pass: Callable[[str, bool], None] | None = None,
             progress: bool = True,
             group: Group = SINGLE) -> tuple[torch.fx.GraphModule, TrainLog]:
    """Fine-tune a normalised graph with NeFT against the noise of the chip ``quantize``
    produces (default: ``settings.chip_quantize()``); returns the deployable graph (noise and
    heads stripped) and the training log. ``group``: the processes that train together
    (``neftc.neft.finetune.finetune``)."""
    settings.validate()
    if settings.mode == AUTO:
        raise NeftcError("NeftSettings(mode='auto') must be resolved first "
                         "(neftc.neft.auto.resolve)")
    classes = num_outputs(gm, ctx.example_inputs)
    passes = training_passes(settings, ctx.target, classes, quantize)
    return run_training_passes(gm, ctx, settings, passes, instruments=instruments,
                               on_pass=on_pass, progress=progress, group=group)


def run_training_passes(gm: torch.fx.GraphModule, ctx: PassContext, settings: NeftSettings,
                        passes: Sequence[Any], *, instruments: Sequence[PassInstrument] = (),
                        on_pass: Callable[[str, bool], None] | None = None,
                        progress: bool = True,
                        split: Split | None = None,
                        group: Group = SINGLE) -> tuple[torch.fx.GraphModule, TrainLog]:
    """Run the training ``passes`` (``training_passes``), fine-tune, strip-training. The
    fine-tuning data is ``settings.data``'s training split, or ``split`` (already fitted to the
    model) when given; ``group``: the processes that fine-tune together."""
    settings.validate()
    if settings.mode == AUTO:
        raise NeftcError("NeftSettings(mode='auto') must be resolved first "
                         "(neftc.neft.auto.resolve)")
    classes = num_outputs(gm, ctx.example_inputs)
    train = training_data(settings, ctx, classes).train if split is None else split
    sigma = ctx.target.noise.sigma_rel if settings.sigma is None else settings.sigma
    gm = PassManager(passes, instruments).run(gm, ctx)
    log = finetune(gm, train, sigma=sigma, epochs=settings.epochs, lr=settings.lr,
                   batch_size=settings.batch_size, seed=settings.seed, device=settings.device,
                   progress=progress, temperature=settings.resolved_temperature(),
                   sigma_schedule=settings.sigma_schedule, bn_stats=settings.bn_stats,
                   group=group)
    log.mode = settings.mode
    if on_pass is not None:
        on_pass(f"fine-tune ({settings.mode}, {settings.epochs} epochs, "
                f"{log.seconds:.1f} s; {loss_summary(settings.mode, log)})", True)
    gm = PassManager([StripTraining()], instruments).run(gm, ctx)
    return gm, log
