"""The NeFT options of ``compile --neft``, ``finetune`` and ``train --neft``, and the chip's
quantisation options the training noise is computed with."""

from __future__ import annotations

import argparse

from neftc.errors import NeftcError


def add_neft_args(parser: argparse.ArgumentParser, required: bool,
                   quantisation: bool = False) -> None:
    """The NeFT options; with ``quantisation``, also the chip's quantisation options the training
    noise is computed with (``compile`` has them already: there they set both)."""
    group = parser.add_argument_group("NeFT fine-tuning (Negative Feedback Training)")
    group.add_argument("--neft", choices=["ovf", "irs", "nit", "none"], required=required,
                       help="ovf: oriented variational forwards; irs: snapshot heads; nit: "
                       "noise-injection baseline; none: plain fine-tuning"
                       + ("" if required else " (default: no fine-tuning)"))
    group.add_argument("--data", default="digits", help="training data: digits (default), an "
                       ".npz, an MNIST IDX folder or a CIFAR-10 batches folder")
    group.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    group.add_argument("--train-sigma", type=float,
                       help="device variation to train against (default: target's sigma_rel)")
    group.add_argument("--beta", type=float, help="feedback strength (default: the paper's "
                       "VGG-8/MNIST value, OVF 1e-3, IRS 1e-2)")
    group.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    group.add_argument("--batch-size", type=int, default=128, help="default 128 (the paper's)")
    group.add_argument("--seed", type=int, default=0, help="randomness of fine-tuning (batch "
                       "order, injected noise; default 0), so it is repeatable; never the "
                       "train/test split, which is fixed by the data")
    group.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    group.add_argument("--train-noise", choices=["cell", "paper"], default="cell",
                       help="cell: exact per-weight equivalent of the chip's cell noise "
                       "(default); paper: the NeFT reference formula")
    group.add_argument("--irs-taps", default="3", help="IRS: number of evenly spaced taps, or "
                       "comma-separated node names (default 3)")
    if quantisation:
        add_quantisation_args(group, training=True)


def add_quantisation_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                           training: bool) -> None:
    """``--per-channel`` and ``--calibration``: how the chip quantises the weights (compile), or
    which chip's noise NeFT trains against (finetune, train --neft)."""
    then = "; compile the tuned model with the same option" if training else ""
    parser.add_argument("--per-channel", action="store_true",
                        help=("train against the noise of a chip quantised with "
                              if training else "") + "one quantisation scale per output "
                        f"channel (default: one per layer){then}")
    parser.add_argument("--calibration", choices=["max-abs", "percentile"], default="max-abs",
                        help="weight range calibration (default: max-abs; percentile clips at "
                        f"the 99.99th percentile of |W|){then}")


def neft_settings(args: argparse.Namespace):  # -> NeftSettings | None
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
    settings = NeftSettings(mode=args.neft, data=args.data, epochs=args.epochs,
                            sigma=args.train_sigma, beta=args.beta, lr=args.lr,
                            batch_size=args.batch_size, seed=args.seed, device=args.device,
                            noise=args.train_noise, taps=taps, per_channel=args.per_channel,
                            calibration=args.calibration)
    settings.validate()
    return settings
