"""The ``neftc`` command line: the top parser, dispatch to the command families (one module each
in ``neftc.cli``) and the error handling every command shares (exit codes, one error line)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from neftc import __version__
from neftc.cli import compile as compile_command
from neftc.cli import demo, layout_tools, neft, sweep, targets, verify
from neftc.cli.common import check_flags
from neftc.errors import NeftcError

EPILOG = """examples:
  neftc demo                                   train, compile and verify a CNN on built-in data
  neftc compile model.pt2 --target fefet_128x128 -o out/
  neftc compile weights.pt --arch resnet18 --input-shape 3,32,32 --target rram4_256x256 -o out/
  neftc calibrate out/ --data digits            store the DAC ranges sign-off and programming use
  neftc inspect out/
  neftc verify out/ --data digits --mc 200 --sigma 0.1 --sigma 0.2
  neftc verify out/ --data digits --mc 1000 --workers 2      the chips split over 2 processes
  neftc sweep out/ --data digits --store sweep.db --sigma 0.1 --mc 1000   resumable grid
  neftc export-onnx out/ -o model.onnx
  neftc targets --json
"""

#: The command families, in the order ``neftc --help`` lists their commands.
FAMILIES = (compile_command, neft, verify, sweep, layout_tools, targets, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``neftc`` parser; each parsed command carries its handler as ``args.run``."""
    parser = argparse.ArgumentParser(
        prog="neftc", description="Compile trained PyTorch models onto compute-in-memory "
        "crossbar accelerators.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"neftc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for family in FAMILIES:
        family.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --workers to run again
    try:
        check_flags(args)
        return args.run(args)
    except NeftcError as exc:
        rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
        where = "" if rank == "0" else f" (process {rank})"
        print(f"neftc {args.command}{where}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("neftc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`neftc ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
