"""What programming pipeline copies as separate chips does to accuracy under noise (issue 9,
item 4), on the demo's model: LeNet trained on the built-in digits (the demo's seed and epochs),
compiled for fefet_128x128 with copies (the default: placement fills free arrays with copies of
the bottleneck layers) and, as the control, with ``--no-replicate`` (one copy per layer). Both
layouts hold the same levels (noise-free accuracy is identical); only the number of independently
programmed copies differs. Same seeds, same chips-per-sigma, both periphery paths.

    python benchmarks/replica_accuracy.py [--trials 100] [--sigmas 0.05 0.1 0.15 0.2]

Prints a markdown table for docs/results.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from neftc.datasets.digits import load_digits
from neftc.driver.compiler import CompileSettings, compile_model
from neftc.driver.demo import DemoConfig
from neftc.flow.verify import VerifySettings, run_verify
from neftc.format.reader import load_layout
from neftc.frontend.zoo import build
from neftc.neft.train import train_classifier
from neftc.targets import resolve_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2])
    parser.add_argument("--target", default="fefet_128x128")
    args = parser.parse_args()
    config = DemoConfig()
    data = load_digits()
    torch.manual_seed(config.seed)
    model = build(config.arch, data.input_shape, data.num_classes).train()
    model = train_classifier(model, data.train, epochs=config.epochs, lr=3e-3, seed=config.seed,
                             progress=False, desc="train")
    target = resolve_target(args.target)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt2"
        torch.export.save(torch.export.export(model.eval(), (data.test.x[:1],)), path)
        layouts = {}
        for name, replicate in (("copies", True), ("one copy", False)):
            out = Path(tmp) / name.replace(" ", "-")
            settings = CompileSettings.with_options(replicate=replicate)
            compile_model(path, target, out, settings=settings)
            layouts[name] = out
            copies = {layer.name: layer.replication for layer in load_layout(out).doc.layers}
            print(f"{name}: replication per layer {copies}")
        for ideal in (True, False):
            for name, out in layouts.items():
                start = time.perf_counter()
                report = run_verify(out, "digits", VerifySettings(
                    sigmas=tuple(args.sigmas), trials=args.trials, seed=0,
                    ideal_periphery=ideal))
                for row in report["results"]:
                    mc = row["mc"]
                    rows.append((("ideal" if ideal else "8-bit DAC/ADC"), name, row["sigma"],
                                 row["quantized_accuracy"], mc["mean"], mc["ci95"], mc["std"],
                                 mc["p5"]))
                print(f"  verified {name}, {'ideal' if ideal else 'DAC/ADC'} periphery in "
                      f"{time.perf_counter() - start:.0f} s")
    print()
    print("| periphery | layout | sigma | noise-free | MC mean | 95 % CI | std across chips | p5 |")
    print("|---|---|---|---|---|---|---|---|")
    for periphery, name, sigma, q, mean, ci, std, p5 in rows:
        print(f"| {periphery} | {name} | {sigma:g} | {100 * q:.2f} | {100 * mean:.2f} | "
              f"± {100 * ci:.2f} | {100 * std:.2f} | {100 * p5:.1f} |")


if __name__ == "__main__":
    main()
