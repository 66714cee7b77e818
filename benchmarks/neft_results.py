"""NeFT vs noise-injection vs no fine-tuning on the built-in digits data, over device variation.

For each training seed: train a LeNet on digits (plain), save it with torch.export; for each
target device model, compile it without fine-tuning and with NeFT NIT, OVF and IRS fine-tuning
at ``--train-sigma``; then Monte-Carlo verify every layout at each sigma (cell-level noise, ideal
periphery, as the paper's protocol is weight-level). Prints a markdown report (docs/results.md).

    python benchmarks/neft_results.py --seeds 0 1 2 --targets rram1_128x128 fefet6_128x128 \\
        --train-sigma 0.3 --sigmas 0.1 0.2 0.3 0.4 --mc 100 > docs/results.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neftc.datasets.digits import load_digits
from neftc.driver.compiler import CompileSettings, compile_model
from neftc.flow.verify import VerifySettings, run_verify
from neftc.frontend.zoo import build
from neftc.neft.pipeline import NeftSettings
from neftc.neft.train import accuracy, train_classifier
from neftc.targets import resolve_target

METHODS = ("baseline", "nit", "ovf", "irs")


def run(args: argparse.Namespace) -> dict:
    results: dict = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "runs": []}
    work = Path(tempfile.mkdtemp(prefix="neft-results-"))
    for seed in args.seeds:
        data = load_digits()  # one fixed split for every seed
        torch.manual_seed(seed)
        model = train_classifier(build(args.arch, data.input_shape, data.num_classes).train(),
                                 data.train, epochs=args.epochs, lr=3e-3, seed=seed,
                                 progress=False)
        float_acc = accuracy(model, data.test)
        path = work / f"model-{seed}.pt2"
        torch.export.save(torch.export.export(model, (data.test.x[:1],)), path)
        for tag in args.targets:
            target = resolve_target(tag)
            for method in METHODS:
                neft = None if method == "baseline" else NeftSettings(
                    mode=method, data="digits", epochs=args.neft_epochs,
                    sigma=args.train_sigma, seed=seed, noise=args.train_noise)
                out = work / f"{tag}-{method}-{seed}"
                start = time.perf_counter()
                compile_model(path, target, out, settings=CompileSettings(neft=neft))
                tune_seconds = time.perf_counter() - start
                report = run_verify(out, "digits", VerifySettings(
                    sigmas=tuple(args.sigmas), trials=args.mc, seed=seed,
                    ideal_periphery=True, noise=args.eval_noise))
                results["runs"].append({
                    "seed": seed, "target": tag, "method": method, "float": float_acc,
                    "compile_seconds": tune_seconds,
                    "quantized": report["results"][0]["quantized_accuracy"],
                    "sigmas": {str(r["sigma"]): r["mc"] for r in report["results"]}})
                print(f"seed {seed} {tag} {method}: " + ", ".join(
                    f"{r['sigma']}: {100 * r['mc']['mean']:.1f}" for r in report["results"]),
                    file=sys.stderr)
    return results


def markdown(results: dict, command: str) -> str:
    cfg = results["config"]
    runs = results["runs"]
    lines = [
        "# Results: NeFT on the built-in digits data",
        "",
        f"Regenerate with:\n\n```bash\n{command}\n```",
        "",
        f"Setup: {cfg['arch']} trained {cfg['epochs']} epochs on digits (1348 train / 449 test "
        f"images, one fixed split for every seed), then compiled for each target without "
        f"fine-tuning (baseline) and with {cfg['neft_epochs']} epochs of NeFT fine-tuning "
        f"(NIT, OVF, IRS; Adam lr 1e-3, batch 128, the paper's VGG-8/MNIST betas: OVF 1e-3, "
        f"IRS 1e-2) against "
        f"the target's own cell-level noise at sigma {cfg['train_sigma']} ('{cfg['train_noise']}' "
        f"training noise). Each layout is verified by {cfg['mc']} simulated chip instances per "
        f"sigma ('{cfg['eval_noise']}' noise, ideal periphery), for each of the training seeds "
        f"{cfg['seeds']}.",
        "",
        "Entries: test accuracy in %, mean over seeds of the per-seed Monte-Carlo mean, ± the 95 % "
        "confidence interval over seeds (Student t on the seed means; it includes training "
        "variation, which dominates the per-seed MC interval). 'quantized' is noise off.",
        "",
    ]
    t95 = {1: float("nan"), 2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}
    for tag in cfg["targets"]:
        lines += [f"## {tag}", "", "| method | quantized | " + " | ".join(
            f"σ={s:g}" for s in cfg["sigmas"]) + " |", "|---|---|" + "---|" * len(cfg["sigmas"])]
        for method in METHODS:
            rows = [r for r in runs if r["target"] == tag and r["method"] == method]
            cells = [f"{100 * np.mean([r['quantized'] for r in rows]):.1f}"]
            for sigma in cfg["sigmas"]:
                means = np.array([r["sigmas"][str(sigma)]["mean"] for r in rows])
                n = len(means)
                half = (t95.get(n, 1.96) * means.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
                cells.append(f"{100 * means.mean():.1f} ± {100 * half:.1f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=["rram1_128x128", "fefet6_128x128"])
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--neft-epochs", type=int, default=15)
    parser.add_argument("--train-sigma", type=float, default=0.3)
    parser.add_argument("--train-noise", choices=["cell", "paper"], default="cell")
    parser.add_argument("--eval-noise", choices=["cell", "paper"], default="cell")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--mc", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(markdown(results, "python " + " ".join(sys.argv)))


if __name__ == "__main__":
    main()
