"""Training-time cost of NeFT's OVF and IRS relative to noise-injection training (NIT).

Times NeFT fine-tuning (same model, data, batch size and number of steps) for plain fine-tuning
without noise, NIT and each NeFT mode, and prints each relative to NIT measured in the same run,
on the zoo's LeNet and on VGG-8 (the paper's model; ``--vgg-widths``: 128 is the paper's width,
12.9 M weights at 32x32) at the image size given:

    python benchmarks/neft_training_cost.py [--repeats 3] [--steps 6] [--image 1,28,28]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neftc.datasets.base import Split
from neftc.frontend.trace import trace_module
from neftc.frontend.zoo import VGG8, build
from neftc.ir.pass_manager import PassContext, PassManager
from neftc.neft.finetune import finetune
from neftc.neft.pipeline import NEFT_MODES
from neftc.passes import Normalize
from neftc.passes.inject_noise import InjectNoise
from neftc.passes.insert_feedback import InsertFeedback
from neftc.targets import resolve_target


def models(shape: tuple[int, ...], widths: list[int]) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    found = {"lenet": build("lenet", shape, 10)}
    for width in widths:
        found[f"vgg8 width {width}"] = VGG8(shape, 10, width=width).eval()
    return found


def weights(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def time_mode(model: torch.nn.Module, mode: str, data: Split, repeats: int) -> float:
    """Median seconds per step of fine-tuning ``model`` for one pass over ``data``."""
    target = resolve_target("fefet_128x128")
    example = data.x[:1]
    ctx = PassContext(target, example)
    times = []
    for _ in range(repeats):
        gm = PassManager([Normalize()]).run(trace_module(model, example), ctx)
        if mode != "none":
            gm = PassManager([InjectNoise(sigma=0.1),
                              InsertFeedback(mode, beta=1e-3, sigma=0.1, num_classes=10)]
                             ).run(gm, ctx)
        start = time.perf_counter()
        log = finetune(gm, data, sigma=0.1, epochs=1, progress=False)
        times.append((time.perf_counter() - start) / log.steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="fine-tuning steps per timing")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image", default="1,28,28", help="input shape C,H,W")
    parser.add_argument("--vgg-widths", type=int, nargs="*", default=[16, 64])
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.image.split(","))
    generator = torch.Generator().manual_seed(0)
    count = args.steps * args.batch_size
    data = Split(torch.rand((count, *shape), generator=generator),
                 torch.randint(0, 10, (count,), generator=generator))
    modes = [m for m in NEFT_MODES if m != "nit"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {count} random "
          f"{args.image} images, batch {args.batch_size} ({args.steps} steps), fefet_128x128 at "
          f"sigma 0.1; milliseconds per step, median of {args.repeats}; ratios to NIT")
    print(f"{'model':<16} {'weights':>10} {'nit':>9} " + " ".join(f"{m:>9}" for m in modes)
          + "  " + " ".join(f"{m + '/nit':>9}" for m in modes))
    for name, model in models(shape, args.vgg_widths).items():
        nit = time_mode(model, "nit", data, args.repeats)
        others = {m: time_mode(model, m, data, args.repeats) for m in modes}
        print(f"{name:<16} {weights(model):>10,} {1e3 * nit:>9.1f} "
              + " ".join(f"{1e3 * others[m]:>9.1f}" for m in modes) + "  "
              + " ".join(f"{others[m] / nit:>9.2f}" for m in modes), flush=True)


if __name__ == "__main__":
    main()
