"""``neftc compile``: a model in, a layout directory out (with ``--neft``, fine-tuned first)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from neftc.cli.common import TRUST_MODEL_HELP, add_target_args
from neftc.cli.neft_options import add_neft_args, add_quantisation_args, neft_settings
from neftc.errors import NeftcError


def add_parser(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser("compile", help="compile a model into a crossbar layout",
                          description="Trace MODEL, quantise, bit-slice and tile its weights for "
                          "the target, place the tiles, and write a layout directory.")
    comp.add_argument("model", type=Path, help="a torch.export.save archive (.pt2) or a "
                      "torch.save state_dict (.pt, with --arch)")
    add_target_args(comp)
    comp.add_argument("-o", "--output", type=Path, default=Path("out"),
                      help="layout directory to write (default: out)")
    comp.add_argument("--arch", help="architecture of a state_dict: mlp, lenet, vgg8, resnet18, "
                      "or package.module:Class (built with no arguments)")
    comp.add_argument("--input-shape", help="one sample's shape, e.g. 1,28,28 (needed with --arch)")
    comp.add_argument("--trust-model", action="store_true", help=TRUST_MODEL_HELP)
    add_quantisation_args(comp, training=False)
    comp.add_argument("--fold-bn", action="store_true",
                      help="fold inference BatchNorm into the preceding conv/linear "
                      "(default: BN runs in the digital periphery)")
    comp.add_argument("--placement", choices=["dataflow", "in-order"], default="dataflow",
                      help="dataflow: keep communicating tiles on nearby cores (default); "
                      "in-order: fill cores in graph order")
    comp.add_argument("--no-replicate", action="store_true",
                      help="do not copy bottleneck layers into free arrays")
    comp.add_argument("--dac-data", metavar="DATA",
                      help="after compiling, set every layer's input DAC range from DATA (as "
                      "'neftc calibrate' does; default with --neft: its --data; else none)")
    comp.add_argument("--dac-samples", type=int, default=512, metavar="N",
                      help="samples (train split, else test) that set the DAC ranges "
                      "(default 512)")
    comp.add_argument("--dump-after-each", type=Path, metavar="DIR",
                      help="write the graph after every pass to DIR")
    add_neft_args(comp, required=False)
    comp.add_argument("--json", action="store_true", help="print the summary as JSON")
    comp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    comp.set_defaults(run=run_compile)


def compile_settings(args: argparse.Namespace):  # -> CompileSettings
    """``compile``'s settings; with --neft, its fine-tuning trains against the noise of the
    chip quantised with the same --per-channel and --calibration (``neft_settings()``)."""
    from neftc.driver.compiler import CompileSettings

    return CompileSettings(per_channel=args.per_channel, calibration=args.calibration,
                           fold_bn=args.fold_bn, dump_after_each=args.dump_after_each,
                           neft=neft_settings(args), placement=args.placement,
                           replicate=not args.no_replicate,
                           progress=not args.quiet and not args.json)


def run_compile(args: argparse.Namespace) -> int:
    from neftc.driver.compiler import compile_model
    from neftc.flow.summary import format_summary, layout_summary
    from neftc.frontend.loader import parse_input_shape
    from neftc.targets import resolve_target

    target = resolve_target(args.target, args.overrides)
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    if args.dac_samples < 1:
        raise NeftcError(f"--dac-samples must be at least 1, got {args.dac_samples}")
    settings = replace(compile_settings(args), target_overrides=tuple(args.overrides),
                       dac_data=args.dac_data or (args.data if args.neft else None),
                       dac_samples=args.dac_samples)
    start = time.perf_counter()

    def on_pass(name: str, modified: bool) -> None:
        if not args.quiet and not args.json:
            print(f"  [{time.perf_counter() - start:6.2f} s] {name}"
                  f"{'' if modified else ' (no change)'}", file=sys.stderr)

    result = compile_model(args.model, target, args.output, arch=args.arch, input_shape=shape,
                           trust_model=args.trust_model, settings=settings, on_pass=on_pass)
    summary = layout_summary(result.doc)
    if args.json:
        print(json.dumps({"output": str(args.output), **summary}, indent=1))
    else:
        print(format_summary(summary), end="")
        print(f"\nwrote {args.output}/ in {time.perf_counter() - start:.1f} s")
    return 0
