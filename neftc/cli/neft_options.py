"""The NeFT options, declared once for ``compile --neft``, ``finetune`` and ``train --neft``: the
same flag names, defaults, bounds (``neftc.cli.common.check_flags``) and help in all three, and
one function that turns them into ``NeftSettings``.

Four argument groups: the training data and randomness (``train`` trains on them too), the NeFT
fine-tuning itself, the chip's weight quantisation (``compile`` quantises with it; NeFT trains
against the noise of the chip so quantised; their defaults are the quantize pass's), and the
processes that train together (``--workers``, ``--dist-timeout``: ``neftc.cli.workers``). The other
defaults are those of ``NeftSettings``. Tests check both; the values are written here so that
building the parser imports no torch.
"""

from __future__ import annotations

import argparse

from neftc.cli.common import duration_s
from neftc.cli.workers import add_workers_args
from neftc.errors import NeftcError

DATA_GROUP = "training data and randomness"
NEFT_GROUP = "NeFT fine-tuning (Negative Feedback Training)"
QUANTISATION_GROUP = "chip weight quantisation (the chip NeFT trains against)"
PROCESSES_GROUP = "several processes (DistributedDataParallel; or run under torchrun)"

#: The NeFT modes (``neftc.neft.pipeline.NEFT_MODES``, checked by a test).
NEFT_CHOICES = ("ovf", "irs", "ovf+irs", "nit", "none", "auto")

#: Old names of NeFT options still accepted, hidden from --help, by ``compile`` and ``finetune``
#: (``train`` has its own --epochs, --lr and --batch-size: those of the training before NeFT).
OLD_NAMES = {"--epochs": "neft_epochs", "--lr": "neft_lr", "--batch-size": "neft_batch_size"}


class _OldName(argparse.Action):
    """Store into the new option's dest and remember the name used, so that an out-of-range
    value is reported under the flag the user typed (``check_flags`` reads ``flag_names``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        names = dict(getattr(namespace, "flag_names", {}))
        names[self.dest] = option_string
        namespace.flag_names = names


def add_neft_options(parser: argparse.ArgumentParser, *, required: bool,
                     old_names: bool = False) -> None:
    """Add the NeFT options to ``parser``; ``required``: --neft must be given (``finetune``);
    ``old_names``: also accept the hidden old names in ``OLD_NAMES``."""
    _add_data_options(parser.add_argument_group(DATA_GROUP))
    _add_fine_tuning_options(parser.add_argument_group(NEFT_GROUP), required)
    _add_quantisation_options(parser.add_argument_group(QUANTISATION_GROUP))
    _add_process_options(parser.add_argument_group(PROCESSES_GROUP))
    if old_names:
        types = {"neft_epochs": int, "neft_lr": float, "neft_batch_size": int}
        for flag, dest in OLD_NAMES.items():
            parser.add_argument(flag, dest=dest, type=types[dest], action=_OldName,
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_data_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--data", default="digits", help="data to train on: digits (built-in, "
                       "the default), an .npz, an MNIST IDX folder or a CIFAR-10 batches folder")
    group.add_argument("--seed", type=int, default=0, help="randomness of training (initial "
                       "weights of a new model, batch order, injected noise; default 0), so it "
                       "is repeatable; never the train/test split, which is fixed by the data")
    group.add_argument("--device", default="cpu", help="where training runs: cpu (default) or "
                       "cuda[:N]")


def _add_fine_tuning_options(group: argparse._ArgumentGroup, required: bool) -> None:
    group.add_argument("--neft", choices=NEFT_CHOICES, required=required,
                       help="fine-tune against the target's device noise: ovf: oriented "
                       "variational forwards; irs: snapshot heads; ovf+irs: both; nit: "
                       "noise-injection baseline; none: plain fine-tuning; auto: choose the mode, "
                       "temperature and training sigma by Monte Carlo on a validation split "
                       "carved from the training data (compile and train: without --neft, no "
                       "fine-tuning)")
    group.add_argument("--neft-epochs", type=int, default=10, metavar="N",
                       help="fine-tuning epochs (default 10)")
    group.add_argument("--neft-lr", type=float, default=1e-3, metavar="LR",
                       help="fine-tuning Adam learning rate (default 1e-3)")
    group.add_argument("--neft-batch-size", type=int, default=128, metavar="N",
                       help="fine-tuning batch size (default 128, the paper's)")
    group.add_argument("--train-sigma", type=float, metavar="S",
                       help="device variation to train against (default: target's sigma_rel)")
    group.add_argument("--beta", type=float, help="feedback strength, >= 0 (default: the "
                       "paper's VGG-8/MNIST value, OVF 1e-3, IRS 1e-2; ovf+irs 1e-2); 0 is the "
                       "no-feedback control")
    group.add_argument("--temperature", type=float, metavar="T", help="the loss divides the "
                       "(combined) logits by T > 0 (default: N + 1 for ovf, irs, ovf+irs with N "
                       "feedback terms, as the paper's loss; 4 for nit, which carries NeFT's "
                       "measured gain, but 1 for nit from scratch (train --neft nit), where 4 "
                       "measured lower; 1 for none; --temperature 1 is plain NIT)")
    group.add_argument("--t-inference", dest="t_inference", type=duration_s, metavar="TIME",
                       help="train for a chip read TIME after programming: the training noise "
                       "includes the target's drift at that time (seconds, or with s, min, h, "
                       "d or y; default: the drift model's reference read, no drift)")
    group.add_argument("--sigma-schedule", choices=["constant", "ramp"], default="constant",
                       help="training sigma over the steps: constant (default); ramp: linearly "
                       "from 0 to the training sigma over the first half of the steps, then held")
    group.add_argument("--bn-stats", choices=["frozen", "train"], default="train",
                       help="BatchNorm while fine-tuning: train (default): batch statistics, "
                       "the running statistics learned under the training noise (the paper's "
                       "reference code; better on VGG-8, docs/results.md); frozen: the "
                       "deployed statistics")
    group.add_argument("--auto-epochs", type=int, default=2, metavar="N",
                       help="--neft auto: fine-tuning epochs per candidate (default 2)")
    group.add_argument("--auto-chips", type=int, default=10, metavar="N",
                       help="--neft auto: simulated chips per candidate on the validation "
                       "split (default 10)")
    group.add_argument("--no-scale-gradient", dest="scale_gradient", action="store_false",
                       help="treat the training noise's std as a constant (the NeFT reference "
                       "code); by default its gradient includes how the chip's noise grows with "
                       "the quantisation scale (the largest weight), so training can narrow "
                       "the weight range")
    group.add_argument("--train-noise", choices=["cell", "paper"], default="cell",
                       help="cell: exact per-weight equivalent of the chip's cell noise "
                       "(default); paper: the NeFT reference formula")
    group.add_argument("--irs-taps", default="3", help="IRS: number of evenly spaced taps, or "
                       "comma-separated node names (default 3)")


#: ``--workers``' help for training (verify's says the results do not change; training's do).
WORKERS_HELP = ("train as K local processes with DistributedDataParallel (gloo on the CPU): each "
                "trains on 1/K of every epoch with its own noise stream, gradients averaged, so "
                "the effective batch is K x the batch size and the result differs from one "
                "process (repeatable for a given K; docs/neft.md); each gets --threads threads "
                "(default: OMP_NUM_THREADS, else the free cores / K). Under torchrun, leave it "
                "out (default 1)")


def _add_process_options(group: argparse._ArgumentGroup) -> None:
    """``--workers`` and ``--dist-timeout`` as ``neftc.cli.workers`` declares them (verify's
    flags), with the help of ``--workers`` saying what several processes change in training."""
    add_workers_args(group, WORKERS_HELP)


def _add_quantisation_options(group: argparse._ArgumentGroup) -> None:
    then = ("; NeFT trains against the noise of a chip so quantised (compile a model tuned by "
            "finetune or train with the same option)")
    # The defaults are the quantize pass's (neftc.passes.quantize.Quantize; a test checks it).
    group.add_argument("--per-channel", action="store_true",
                       help=f"one quantisation scale per output channel (default: one per "
                       f"layer){then}")
    group.add_argument("--calibration", choices=["max-abs", "percentile"], default="max-abs",
                       help="weight range calibration (default: max-abs; percentile clips at "
                       f"the 99.99th percentile of |W|){then}")


def neft_settings(args: argparse.Namespace):  # -> NeftSettings | None
    """The ``NeftSettings`` of parsed NeFT options (validated), or None without --neft."""
    from neftc.bounds import MAX_IRS_TAPS
    from neftc.neft.pipeline import NeftSettings

    if not getattr(args, "neft", None):
        return None
    taps: int | tuple[str, ...]
    if args.irs_taps.strip().isdecimal():  # a count (checked by validate), else node names
        if len(args.irs_taps.strip()) > 6:
            raise NeftcError(f"--irs-taps must be an integer >= 1 and <= {MAX_IRS_TAPS} or node "
                             f"names, got {args.irs_taps.strip()[:20]}...")
        taps = int(args.irs_taps)
    else:
        taps = tuple(t.strip() for t in args.irs_taps.split(",") if t.strip())
    settings = NeftSettings(mode=args.neft, data=args.data, epochs=args.neft_epochs,
                            sigma=args.train_sigma, beta=args.beta, lr=args.neft_lr,
                            batch_size=args.neft_batch_size, seed=args.seed, device=args.device,
                            noise=args.train_noise, taps=taps, per_channel=args.per_channel,
                            calibration=args.calibration, temperature=args.temperature,
                            sigma_schedule=args.sigma_schedule, bn_stats=args.bn_stats,
                            scale_gradient=args.scale_gradient, auto_epochs=args.auto_epochs,
                            auto_chips=args.auto_chips, t_inference_s=args.t_inference)
    settings.validate()
    return settings
