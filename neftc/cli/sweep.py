"""``neftc sweep``: a resumable Monte-Carlo grid recorded chip by chip in one SQLite store, and
``neftc sweep --report``: its statistics and plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neftc.cli.workers import add_workers_args, check_workers, launch
from neftc.distributed import process_group
from neftc.errors import NeftcError


def add_parser(sub: argparse._SubParsersAction) -> None:
    sw = sub.add_parser(
        "sweep", help="resumable Monte-Carlo grid into a results store",
        description="Run every layout x --sigma x --noise x --periphery cell on chip instances "
        "0..N-1 of --seed and record each finished chip in --store (SQLite, one file, created "
        "when missing). Run the same command again after an interruption: only the chips the "
        "store lacks are computed. Each chip's accuracy equals 'neftc verify --json's for the "
        "same settings. With --report, print and write the statistics of the store instead.")
    sw.add_argument("layout", type=Path, nargs="*", help="layout directories (not with --report)")
    sw.add_argument("--store", type=Path, required=True, metavar="FILE",
                    help="the results store (SQLite file); keep it on a local disk")
    sw.add_argument("--data", help="digits (built-in), an .npz, an MNIST IDX folder or a "
                    "CIFAR-10 batches folder: its test split is scored (required to sweep)")
    sw.add_argument("--sigma", type=float, action="append", metavar="S",
                    help="device variation relative to the cell range; repeat for the grid "
                    "(at least one to sweep)")
    sw.add_argument("--noise", choices=["cell", "paper", "off"], action="append",
                    help="noise model, as verify's --noise; repeat for the grid (default cell)")
    sw.add_argument("--periphery", choices=["ideal", "target"], action="append",
                    help="target: the target's DAC/ADC (verify's default); ideal: no "
                    "quantisation (verify --ideal-periphery); repeat for the grid "
                    "(default target)")
    sw.add_argument("--mc", type=int, default=100, metavar="N",
                    help="chip instances 0..N-1 per cell (default 100)")
    sw.add_argument("--seed", type=int, default=0,
                    help="randomness of the simulated chips, as verify's --seed (default 0)")
    sw.add_argument("--split", action="store_true",
                    help="split an x,y .npz into train/test as verify --split does (default: "
                    "all of it is the test set, as verify)")
    sw.add_argument("--batch-size", type=int, default=1024)
    sw.add_argument("--calib-samples", type=int, default=512,
                    help="samples (train split, else test) that set the DAC ranges when the "
                    "layout stores none (default 512, as verify)")
    sw.add_argument("--report", action="store_true",
                    help="print the per-cell statistics of --store, and write sweep-report.json "
                    "and an accuracy-vs-sigma PNG per layout/noise/periphery into -o")
    sw.add_argument("-o", "--output", type=Path, metavar="DIR",
                    help="with --report: where to write (default: the store's folder)")
    sw.add_argument("--json", action="store_true", help="with --report: print it as JSON")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_workers_args(sw)
    sw.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    if args.report:
        return _report(args)
    from neftc.flow.sweep import SweepSettings, format_outcome
    from neftc.flow.sweep import run_sweep as sweep

    if not args.layout:
        raise NeftcError("give at least one LAYOUT to sweep (or --report to read the store)")
    if args.data is None:
        raise NeftcError("give --data: the data whose test split the chips are scored on")
    if args.output is not None or args.json:
        raise NeftcError("-o and --json go with --report; drop them to sweep")
    check_workers(args)
    settings = SweepSettings(
        sigmas=tuple(dict.fromkeys(args.sigma or ())), noises=tuple(dict.fromkeys(
            args.noise or ["cell"])), peripheries=tuple(dict.fromkeys(args.periphery or
                                                                       ["target"])),
        chips=args.mc, seed=args.seed, batch_size=args.batch_size,
        calib_samples=args.calib_samples, split=args.split)
    if args.workers > 1:
        return launch(args.argv, args.workers, "sweep", args.threads)
    with process_group("cpu", args.dist_timeout) as group:
        outcome = sweep(args.layout, args.data, args.store, settings,
                        progress=not args.quiet, group=group)
    if group.is_main:
        print(format_outcome(outcome, args.store), end="")
    return 0


def _report(args: argparse.Namespace) -> int:
    from neftc.flow.sweep import format_report, sweep_report, write_report

    given = [flag for flag, value in (("LAYOUT", args.layout), ("--data", args.data),
                                      ("--sigma", args.sigma), ("--noise", args.noise),
                                      ("--periphery", args.periphery)) if value]
    if given:
        raise NeftcError(f"--report reads only the store; drop {', '.join(given)}")
    report = sweep_report(args.store)
    written = write_report(report, args.output or args.store.resolve().parent)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report), end="")
        print(f"wrote {', '.join(str(path) for path in written)}")
    return 0
