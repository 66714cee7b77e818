"""``neftc verify`` (Monte-Carlo accuracy sign-off) and ``neftc calibrate`` (the input DAC ranges
sign-off and programming use): a layout and data in, measurements out."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from neftc.cli.common import duration_s
from neftc.cli.workers import add_workers_args, check_workers, launch
from neftc.distributed import process_group
from neftc.errors import NeftcError


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_verify_parser(sub)
    _add_calibrate_parser(sub)


def _add_verify_parser(sub: argparse._SubParsersAction) -> None:
    ver = sub.add_parser("verify", help="Monte-Carlo accuracy sign-off of a layout",
                         description="Run the layout on simulated chip instances (each cell "
                         "programmed once with the target's device variation) over a test set and "
                         "report the accuracy distribution per sigma.")
    ver.add_argument("layout", type=Path)
    ver.add_argument("--data", default="digits", help="digits (built-in), an .npz (x,y: all "
                     "of it is the test set unless --split; or x_test,y_test; fed as-is, "
                     "integer 0..255 images get a warning), an MNIST IDX folder or a CIFAR-10 "
                     "batches folder")
    ver.add_argument("--split", action="store_true",
                     help="split an x,y .npz into train/test as train, finetune and compile "
                     "--neft do (a quarter for test, fixed permutation) and score the test part "
                     "only: use it when the model was trained on the same file")
    ver.add_argument("--mc", type=int, default=100, metavar="N",
                     help="chip instances per sigma (default 100)")
    ver.add_argument("--sigma", type=float, action="append", metavar="S",
                     help="device variation relative to the cell range; repeat for a sweep "
                     "(default: the target's noise.sigma_rel)")
    ver.add_argument("--seed", type=int, default=0, help="randomness of the simulated chips: "
                     "chip instance i of seed K is always the same chip (default 0); never the "
                     "train/test split, which is fixed by the data")
    ver.add_argument("--noise", choices=["cell", "paper", "off"], default="cell",
                     help="cell: the cell-level device model (default); paper: the NeFT reference "
                     "weight-level formula (needs --ideal-periphery); off: no variation (no "
                     "sigma: the table shows '-')")
    ver.add_argument("--ideal-periphery", action="store_true",
                     help="no DAC/ADC quantisation (default: the target's DAC and ADC)")
    ver.add_argument("--no-faults", action="store_true", help="ignore the target's stuck-at rates")
    ver.add_argument("--ideal", dest="ideal_effects", action="append", default=[],
                     metavar="EFFECT[,EFFECT]",
                     help="switch off device effects of the target (target.effects, 'neftc "
                     "targets TAG'): write-verify, clip, drift, ir-drop, read-noise, dac, adc, or "
                     "all; repeatable (default: every effect the target states is on)")
    ver.add_argument("--t-inference", dest="t_inference", type=duration_s, metavar="TIME",
                     help="read the chips TIME after programming, for drift: seconds, or a "
                     "number with s, min, h, d or y (1d = 86400 s; default: the target's "
                     "effects.drift.t0_s, before any drift)")
    ver.add_argument("--calib-samples", type=int, default=512,
                     help="samples (train split, else test) that set the DAC ranges")
    ver.add_argument("--batch-size", type=int, default=1024)
    ver.add_argument("--chips-per-pass", type=int, default=1, metavar="K",
                     help="evaluate K chip instances in one batched pass; needs "
                     "--ideal-periphery (refused without: the DAC/ADC path runs one chip per "
                     "pass). Same results; meant for accelerators: on 2 CPU cores one chip per "
                     "pass is fastest")
    ver.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the "
                     "network runs; the noise is drawn on the CPU, so a seed gives the same "
                     "chips on either")
    ver.add_argument("--compare", type=Path, metavar="LAYOUT_B",
                     help="also run layout B on the same chip instances (chip i of the seed, "
                     "same settings) and report per sigma the paired difference B - A with its "
                     "95%% interval and how many chips B wins/ties/loses; B must have the same "
                     "target, inputs and classes")
    ver.add_argument("--bn-recalibrate", type=int, metavar="N",
                     help="also report the same chips after per-chip BatchNorm re-calibration: "
                     "each chip re-estimates its BatchNorm statistics from the first N inputs "
                     "of the data's training split run through it (labels unused; default off)")
    ver.add_argument("--json", action="store_true", help="print the report as JSON "
                     "(per-chip accuracies included)")
    ver.add_argument("-o", "--output", type=Path, metavar="PATH.json",
                     help="write the record here (a new .json file, never overwritten) and its "
                     "report beside it (.html); the layout directory is left untouched "
                     "(default: the layout directory: verify.json and report.html, the latest "
                     "run, and verify/verify-<UTC time>-<settings hash>.json, every run; none of "
                     "them is covered by the layout's SHA256SUMS)")
    ver.add_argument("--no-report", action="store_true", help="write no files (print only)")
    ver.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_workers_args(ver)
    ver.set_defaults(run=run_verify)


def _add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser("calibrate", help="store the input DAC ranges in a layout",
                         description="Run the noise-free layout on the first N samples of DATA "
                         "(train split, else test), set every crossbar layer's input DAC range "
                         "(max-abs of its input activations) and write the layout again, "
                         "re-signed. 'neftc verify' and 'neftc program' then use these ranges.")
    cal.add_argument("layout", type=Path)
    cal.add_argument("--data", required=True, help="digits (built-in), an .npz, an MNIST IDX "
                     "folder or a CIFAR-10 batches folder")
    cal.add_argument("--samples", type=int, default=512, metavar="N",
                     help="samples that set the ranges (default 512, as neftc verify)")
    cal.add_argument("-o", "--output", type=Path, help="write the calibrated layout here "
                     "(default: rewrite LAYOUT in place)")
    cal.set_defaults(run=run_calibrate)


def run_verify(args: argparse.Namespace) -> int:
    from neftc.flow.report import (
        VERIFY_JSON,
        check_verify_output,
        layout_identity,
        run_name,
        write_report,
        write_run_record,
        write_verify_output,
    )
    from neftc.flow.verify import VerifySettings, format_verify
    from neftc.flow.verify import run_verify as monte_carlo
    from neftc.format.reader import load_layout

    if args.mc < 1:
        raise NeftcError(f"--mc must be at least 1, got {args.mc}")
    if args.sigma and any(s < 0 for s in args.sigma):
        raise NeftcError(f"--sigma must be >= 0, got {min(args.sigma)}")
    if args.batch_size < 1 or args.calib_samples < 1 or args.chips_per_pass < 1:
        raise NeftcError("--batch-size, --calib-samples and --chips-per-pass must be at least 1")
    if args.sigma and args.noise == "off":
        raise NeftcError("--sigma sets the device variation and --noise off has none; drop "
                         "--sigma, or use --noise cell (or paper) to sweep it")
    check_workers(args)
    settings = VerifySettings(sigmas=tuple(args.sigma) if args.sigma else None, trials=args.mc,
                              seed=args.seed, noise=args.noise,
                              ideal_periphery=args.ideal_periphery, faults=not args.no_faults,
                              batch_size=args.batch_size, calib_samples=args.calib_samples,
                              chips_per_pass=args.chips_per_pass, device=args.device,
                              compare=args.compare, bn_recalibrate=args.bn_recalibrate,
                              split=args.split, ideal_effects=tuple(
                                  name.strip() for names in args.ideal_effects
                                  for name in names.split(",") if name.strip()),
                              t_inference_s=args.t_inference)
    if args.output is not None:
        if args.no_report:
            raise NeftcError("-o says where to write the record and --no-report writes none; "
                             "give one of them")
        check_verify_output(args.output)  # before the run, not after it
    if args.workers > 1:
        return launch(args.argv, args.workers, "verify", args.threads)
    started = datetime.now(timezone.utc)
    verified = layout_identity(args.layout)  # the layout this sign-off is about
    with process_group(args.device, args.dist_timeout) as group:
        # Under torchrun or --workers: every process runs its share of the chips and returns
        # the whole record; rank 0 writes and prints it.
        if group.device(args.device) != args.device:  # one GPU per process
            settings = dataclasses.replace(settings, device=group.device(args.device))
        report = monte_carlo(args.layout, args.data, settings,
                             progress=not args.quiet and not args.json, group=group,
                             warn=lambda message: print(message, file=sys.stderr))
    if not group.is_main:
        return 0
    written: list[Path] = []
    if args.output is not None:
        written += write_verify_output(args.output, load_layout(args.layout).doc, report)
    elif not args.no_report:
        # verify.json and report.html together or neither, and only into the layout verified;
        # then this run's own record, which later runs never replace.
        html = write_report(args.layout, load_layout(args.layout).doc, report, expect=verified)
        written += [args.layout / VERIFY_JSON, html]
        name = run_name({"data": args.data, **dataclasses.asdict(settings)}, started)
        written.append(write_run_record(args.layout, report, name))
    print(json.dumps(report, indent=1) if args.json else format_verify(report), end="\n"
          if args.json else "")
    if written and not args.json:
        print("wrote " + ", ".join(str(path) for path in written))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from neftc.flow.calibration import calibrate_layout, format_calibration

    if args.samples < 1:
        raise NeftcError(f"--samples must be at least 1, got {args.samples}")
    result = calibrate_layout(args.layout, args.data, args.samples, out_dir=args.output)
    print(format_calibration(result), end="")
    return 0
