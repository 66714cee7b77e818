"""Training-time cost of NeFT's OVF and IRS relative to noise-injection training (NIT).

Times NeFT fine-tuning epochs (same model, data, batch size and number of steps) for NIT, OVF and
IRS, and plain fine-tuning without noise, and prints each relative to NIT measured in the same run:

    python benchmarks/neft_training_cost.py [--repeats 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neftc.datasets.digits import load_digits
from neftc.frontend.trace import trace_module
from neftc.frontend.zoo import VGG8, build
from neftc.ir.pass_manager import PassContext, PassManager
from neftc.neft.finetune import finetune
from neftc.passes import Normalize
from neftc.passes.inject_noise import InjectNoise
from neftc.passes.insert_feedback import InsertFeedback
from neftc.targets import resolve_target

MODES = ("none", "nit", "ovf", "irs")


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"lenet (21 k weights)": build("lenet", (1, 8, 8), 10),
            "vgg8 width 16 (81 k weights)": VGG8((1, 8, 8), 10, width=16).eval()}


def time_mode(model: torch.nn.Module, mode: str, epochs: int) -> float:
    target = resolve_target("fefet_128x128")
    data = load_digits().train
    example = data.x[:1]
    ctx = PassContext(target, example)
    gm = PassManager([Normalize()]).run(trace_module(model, example), ctx)
    if mode != "none":
        gm = PassManager([InjectNoise(sigma=0.1),
                          InsertFeedback(mode, beta=1e-3, sigma=0.1, num_classes=10)]).run(gm, ctx)
    start = time.perf_counter()
    finetune(gm, data, sigma=0.1, epochs=epochs, progress=False)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; digits train split "
          f"(1348 images), batch 128; seconds per epoch, median of {args.repeats}")
    print(f"{'model':<30} " + " ".join(f"{m:>8}" for m in MODES) + "   OVF/NIT  IRS/NIT")
    for name, model in models().items():
        times = {m: statistics.median(time_mode(model, m, args.epochs)
                                      for _ in range(args.repeats)) for m in MODES}
        print(f"{name:<30} " + " ".join(f"{times[m]:>8.3f}" for m in MODES)
              + f"   {times['ovf'] / times['nit']:>7.2f}  {times['irs'] / times['nit']:>7.2f}")


if __name__ == "__main__":
    main()
