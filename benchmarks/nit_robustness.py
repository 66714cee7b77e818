"""Does NIT fine-tuning make a trained model more robust? Baseline and NIT measured in one run.

This was a test (``test_nit_fine_tuning_makes_the_model_more_robust``); it is a result, so it
lives here. Through the CLI, as a user would: train a LeNet on the digits, compile it for the
target without fine-tuning (baseline) and with NIT fine-tuning at ``--train-sigma``, then verify
both layouts on ``--mc`` simulated chips at ``--sigma`` (ideal periphery). Prints each Monte-Carlo
mean with its 95 % interval, the difference NIT - baseline and the ratio NIT / baseline.

    python benchmarks/nit_robustness.py                # the old test's setting (~10 s)
    python benchmarks/nit_robustness.py --mc 200 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from neftc.cli.main import main as neftc


def run_cli(*argv: str) -> str:
    """Run ``neftc argv`` in this process; its standard output, or SystemExit on failure."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = neftc(list(argv))
    if code != 0:
        raise SystemExit(f"neftc {' '.join(argv)} failed with exit code {code}")
    return out.getvalue()


def measure(work: Path, seed: int, args: argparse.Namespace) -> dict[str, dict]:
    """{"base": mc, "nit": mc} for one training seed (``mc``: verify --json's statistics)."""
    model = work / f"lenet-{seed}.pt2"
    run_cli("train", "lenet", "--data", "digits", "--epochs", str(args.epochs), "--seed",
            str(seed), "-o", str(model), "-q")
    results = {}
    plain_nit = ["--neft", "nit", "--temperature", "1", "--epochs", str(args.neft_epochs),
                 "--train-sigma", str(args.train_sigma), "--seed", str(seed)]
    for name, extra in (("base", []), ("nit", plain_nit)):
        layout = work / f"{name}-{seed}"
        run_cli("compile", str(model), "--target", args.target, "-o", str(layout), "-q", *extra)
        report = json.loads(run_cli("verify", str(layout), "--mc", str(args.mc), "--sigma",
                                    str(args.sigma), "--ideal-periphery", "--json"))
        results[name] = report["results"][0]["mc"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", default="fefet_128x128")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--neft-epochs", type=int, default=15)
    parser.add_argument("--train-sigma", type=float, default=0.15)
    parser.add_argument("--sigma", type=float, default=0.15)
    parser.add_argument("--mc", type=int, default=40)
    args = parser.parse_args()
    print(f"{args.target}, LeNet {args.epochs} epochs, NIT {args.neft_epochs} epochs at sigma "
          f"{args.train_sigma}; {args.mc} chips at sigma {args.sigma}, ideal periphery")
    print("seed  baseline (95 % CI)      NIT (95 % CI)           NIT - base  NIT / base")
    with tempfile.TemporaryDirectory(prefix="nit-robustness-") as tmp:
        for seed in args.seeds:
            mc = measure(Path(tmp), seed, args)
            base, nit = mc["base"], mc["nit"]
            print(f"{seed:>4}  {100 * base['mean']:5.1f} % (+-{100 * base['ci95']:4.1f})      "
                  f"{100 * nit['mean']:5.1f} % (+-{100 * nit['ci95']:4.1f})      "
                  f"{100 * (nit['mean'] - base['mean']):+6.1f} pt  "
                  f"{nit['mean'] / base['mean']:9.3f}")


if __name__ == "__main__":
    main()
