"""``neftc compile``: a model in, a layout directory out (with ``--neft``, fine-tuned first; as
several processes with ``--workers K`` or under torchrun, DistributedDataParallel fine-tuning,
and rank 0 compiles, prints and writes the layout)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import operator
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from neftc.cli.common import add_model_args, add_target_args
from neftc.cli.neft_options import add_neft_options, neft_settings
from neftc.cli.workers import check_workers, launch
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
    add_model_args(comp)
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
    add_neft_options(comp, required=False, old_names=True)
    comp.add_argument("--json", action="store_true", help="print the summary as JSON")
    comp.add_argument("--pipeline", metavar="TEXT",
                      help="the passes to run, as pass specs (default: normalize,quantize,"
                      "bit-slice,map-tiles,place; a layout's options.pipeline is one); the "
                      "flags above set options of its passes, e.g. --per-channel sets "
                      "quantize{per-channel=true}")
    comp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    comp.set_defaults(run=run_compile)


#: The one place where compile flags meet pass options: flag dest -> (pass name, field, the
#: field's value from the flag). A flag whose value differs from the field's default (the flags'
#: defaults are the passes' defaults) sets that field on the pipeline's pass (the default
#: pipeline's, or --pipeline's).
PASS_FLAGS: tuple[tuple[str, str, str, Callable[[Any], Any]], ...] = (
    ("fold_bn", "normalize", "fold_bn", bool),
    ("per_channel", "quantize", "per_channel", bool),
    ("calibration", "quantize", "calibration", str),
    ("placement", "place", "strategy", str),
    ("no_replicate", "place", "replicate", operator.not_),
)


def compile_pipeline(args: argparse.Namespace) -> list[Any]:
    """The compile pipeline: --pipeline (default: the default pipeline) with the pass flags of
    ``PASS_FLAGS`` set on its passes."""
    from neftc.passes import PASSES, default_pipeline, parse_pipeline

    passes = parse_pipeline(args.pipeline) if args.pipeline else default_pipeline()
    for dest, name, field, value_of in PASS_FLAGS:
        given = getattr(args, dest)
        value = None if given is None else value_of(given)
        default = {f.name: f.default for f in dataclasses.fields(PASSES[name])}[field]
        if value is None or value == default:  # not given (None), or the pass's default
            continue
        flag = "--" + dest.replace("_", "-")
        if not any(p.name == name for p in passes):
            raise NeftcError(f"{flag} sets an option of pass '{name}', which --pipeline "
                             f"'{args.pipeline}' does not run; add {name} to the pipeline")
        passes = [dataclasses.replace(p, **{field: value}) if p.name == name else p
                  for p in passes]
    return passes


def compile_settings(args: argparse.Namespace):  # -> CompileSettings
    """``compile``'s settings: the pipeline's passes hold the pass options; with --neft, the
    fine-tuning trains against the noise of the pipeline's own quantize pass (the NeftSettings'
    quantisation fields record that pass's options, which the compiler checks)."""
    from neftc.driver.compiler import CompileSettings

    pipeline = tuple(compile_pipeline(args))
    settings = CompileSettings(pipeline=pipeline, dump_after_each=args.dump_after_each,
                               progress=not args.quiet and not args.json)
    neft = neft_settings(args)
    if neft is not None:
        chip = settings.quantize
        neft = replace(neft, per_channel=chip.per_channel, calibration=chip.calibration)
    return replace(settings, neft=neft)


def run_compile(args: argparse.Namespace) -> int:
    from neftc.distributed import process_group
    from neftc.driver.compiler import compile_model
    from neftc.flow.report import verify_run_count
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
    check_workers(args)
    if args.workers > 1 and not args.neft:
        raise NeftcError("--workers splits NeFT fine-tuning among processes; a compile without "
                         "--neft runs in one process: leave out --workers, or give --neft")
    if args.workers > 1:
        return launch(args.argv, args.workers, "compile", args.threads)
    start = time.perf_counter()
    earlier_runs = verify_run_count(args.output)
    with process_group(args.device, args.dist_timeout) as group:
        if not group.is_main:  # the other processes only train: no dumps, no progress lines
            settings = replace(settings, dump_after_each=None, progress=False)
        if settings.neft is not None:  # a GPU per process
            settings = replace(settings, neft=replace(settings.neft,
                                                      device=group.device(settings.neft.device)))

        def on_pass(name: str, modified: bool) -> None:
            if not args.quiet and not args.json and group.is_main:
                print(f"  [{time.perf_counter() - start:6.2f} s] {name}"
                      f"{'' if modified else ' (no change)'}", file=sys.stderr)

        result = compile_model(args.model, target, args.output, arch=args.arch,
                               input_shape=shape, trust_model=args.trust_model,
                               settings=settings, on_pass=on_pass, group=group)
    if not group.is_main:
        return 0
    summary = layout_summary(result.doc)
    if args.json:
        print(json.dumps({"output": str(args.output), **summary}, indent=1))
    else:
        for note in result.notes:
            print(f"note: {note}")
        print(format_summary(summary), end="")
        print(f"\nwrote {args.output}/ in {time.perf_counter() - start:.1f} s")
    if earlier_runs:  # the folder is one layout: its sign-offs went with the layout they signed
        print(f"note: {args.output}/ held an earlier layout; its {earlier_runs} verify run "
              f"record(s) ({args.output}/verify/) signed off that layout and were replaced with "
              "it. Keep sign-offs apart from the layout with 'neftc verify LAYOUT -o PATH.json'",
              file=sys.stderr if args.json else sys.stdout)
    return 0
