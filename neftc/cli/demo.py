"""``neftc demo``: train, compile with and without NeFT, and verify a CNN on built-in data."""

from __future__ import annotations

import argparse
from pathlib import Path

from neftc.cli.common import add_target_args
from neftc.cli.workers import add_threads_arg, use_threads
from neftc.errors import NeftcError


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="train, compile with and without NeFT, and verify a "
                          "CNN on built-in data",
                          description="Train a LeNet-style CNN on the built-in digits data (no "
                          "download), save it with torch.export, compile it for the target "
                          "without fine-tuning and with NeFT NIT, OVF and IRS fine-tuning, verify "
                          "each by Monte Carlo on simulated chips, and print one comparison table "
                          "(also written to report.md).")
    add_target_args(demo)
    demo.add_argument("-o", "--output", type=Path, default=Path("neftc-demo"),
                      help="directory for model.pt2, the layouts, report.md and demo.json "
                      "(default: neftc-demo)")
    demo.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    demo.add_argument("--neft-epochs", type=int, default=15,
                      help="NeFT fine-tuning epochs (default 15)")
    demo.add_argument("--train-sigma", type=float, default=0.1,
                      help="device variation NeFT trains against (default 0.1)")
    demo.add_argument("--sigma", type=float, action="append", metavar="S",
                      help="sigmas to verify at (default 0.05, 0.1, 0.15)")
    demo.add_argument("--mc", type=int, default=30, metavar="N",
                      help="chip instances per sigma and method (default 30)")
    demo.add_argument("--seed", type=int, default=0, help="randomness of training, "
                      "fine-tuning and the simulated chips (default 0); the digits train/test "
                      "split is fixed")
    add_threads_arg(demo)
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from neftc.driver.demo import DemoConfig, format_demo
    from neftc.driver.demo import run_demo as train_compile_verify
    from neftc.targets import resolve_target

    target = resolve_target(args.target, args.overrides)
    use_threads(args)
    if min(args.epochs, args.neft_epochs, args.mc) < 1:
        raise NeftcError("--epochs, --neft-epochs and --mc must be at least 1")
    if (args.sigma and min(args.sigma) < 0) or args.train_sigma < 0:
        raise NeftcError("sigmas must be >= 0")
    config = DemoConfig(epochs=args.epochs, neft_epochs=args.neft_epochs,
                        train_sigma=args.train_sigma,
                        sigmas=tuple(args.sigma) if args.sigma else DemoConfig.sigmas,
                        trials=args.mc, seed=args.seed)
    record = train_compile_verify(args.output, target, config, progress=not args.quiet)
    print(format_demo(record, args.output), end="")
    return 0
