"""Monte-Carlo sign-off on several processes: throughput of ``neftc verify --workers K`` with one
thread per process, against one process with one thread, in the same run.

The model is the zoo's LeNet (untrained: timing only; ``--model vgg8`` for a larger one) compiled
for ``fefet_128x128`` with the compiler's defaults into a temporary folder; the test set is the
built-in digits test split tiled to ``--samples`` (default 4490) and written as an .npz.
For each periphery (ideal, and the target's DAC/ADC) and each process count K in ``--workers``
(default 1 and 2), the script runs the real command

    OMP_NUM_THREADS=1 python -m neftc verify LAYOUT --data TILED.npz --mc N --sigma 0.1 \\
        --json --no-report -q --workers K

``--repeats`` times, the process counts taking turns, and reads from the JSON the Monte-Carlo
seconds (``results[0].seconds``: the slowest process's time from its first chip to the gathered
result) and measures the command's wall time (start-up, layout load, noise-free run included).
It reports the medians, chips per second, and the parallel efficiency

    efficiency(K) = throughput(K) / (K x throughput(1))

for the Monte Carlo alone and end to end, and checks that every K gives the same per-chip
accuracies as one process. ``other``: cores kept busy by other processes while the runs went
(from /proc/stat minus the runs' own CPU time); above 0.2 the numbers are not clean and a
WARNING is printed. Target (issue 14): efficiency >= 0.8 with 2 processes on 2 cores (PASS/MISS
line, never asserted).

    python benchmarks/mc_parallel.py [--mc N] [--target-mc N] [--samples N] [--repeats N]
        [--workers 1,2] [--model lenet|vgg8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import busy_cpu_seconds

from neftc.datasets.digits import load_digits
from neftc.driver.compiler import compile_module
from neftc.frontend.zoo import build
from neftc.targets import resolve_target


def make_inputs(folder: Path, samples: int, model_name: str) -> tuple[Path, Path]:
    """The layout (untrained model, compiler defaults) and the tiled digits test set."""
    data = load_digits()
    torch.manual_seed(0)
    model = build(model_name, data.input_shape, data.num_classes).eval()
    layout = folder / "layout"
    compile_module(model, data.test.x[:1], resolve_target("fefet_128x128"), layout)
    reps = -(-samples // len(data.test))
    x = data.test.x.repeat(reps, 1, 1, 1)[:samples].numpy()
    y = data.test.y.repeat(reps)[:samples].numpy()
    tiled = folder / "tiled.npz"
    np.savez(tiled, x_test=x, y_test=y)
    return layout, tiled


def run_once(layout: Path, data: Path, trials: int, workers: int, ideal: bool
             ) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    argv = [sys.executable, "-m", "neftc", "verify", str(layout), "--data", str(data),
            "--mc", str(trials), "--sigma", "0.1", "--json", "--no-report", "-q",
            "--workers", str(workers), *(["--ideal-periphery"] if ideal else [])]
    before_busy = busy_cpu_seconds()
    before_own = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after_own = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"verify failed ({' '.join(argv)}):\n{done.stderr[-3000:]}")
    own = (after_own.ru_utime + after_own.ru_stime) - (before_own.ru_utime + before_own.ru_stime)
    other = max(0.0, (busy_cpu_seconds() - before_busy - own) / wall)
    row = json.loads(done.stdout)["results"][0]
    return {"wall": wall, "mc": row["seconds"], "chips": row["chip_accuracies"], "other": other}


def measure(layout: Path, data: Path, trials: int, workers: list[int], repeats: int,
            ideal: bool) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in workers}
    run_once(layout, data, max(1, trials // 8), workers[-1], ideal)  # warm-up (page cache)
    for _ in range(repeats):
        for k in workers:
            runs[k].append(run_once(layout, data, trials, k, ideal))
    base = runs[workers[0]]
    rows = []
    for k in workers:
        mc = statistics.median(r["mc"] for r in runs[k])
        wall = statistics.median(r["wall"] for r in runs[k])
        rows.append({"workers": k, "mc_seconds": mc, "wall_seconds": wall,
                     "chips_per_second": trials / mc, "chips_per_second_wall": trials / wall,
                     "same_chips": all(r["chips"] == base[0]["chips"] for r in runs[k]),
                     "other": statistics.median(r["other"] for r in runs[k])})
    one = rows[0]
    for row in rows:
        k = row["workers"] / one["workers"]
        row["efficiency"] = row["chips_per_second"] / (k * one["chips_per_second"])
        row["efficiency_wall"] = row["chips_per_second_wall"] / (k * one["chips_per_second_wall"])
    return {"periphery": "ideal" if ideal else "target DAC/ADC", "trials": trials, "rows": rows}


def paper_protocol_cost(samples: int, trials: int, target_trials: int) -> dict[str, Any]:
    """One process's seconds per chip instance for ResNet-18 (11 M weights, untrained, the
    compiler's default layout) on random 3x32x32 inputs, ideal periphery and target DAC/ADC:
    timed at ``samples // 4`` and ``samples`` inputs, fitted as ``fixed + per_sample x n`` (the
    fixed part is programming the chip: drawing every cell's variation) and extrapolated to a
    CIFAR-10-sized test set (10,000 samples). docs/scale-out.md's estimate of the NeFT paper's
    protocol (1,000 chips x 8 sigmas) starts from these."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = build("resnet18", (3, 32, 32), 10).eval()
        x = torch.rand(samples, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (samples,), generator=generator)
        sizes = (max(1, samples // 4), samples)
        for n in sizes:
            np.savez(folder / f"cifar-like-{n}.npz", x_test=x[:n].numpy(), y_test=y[:n].numpy(),
                     x_train=x[:64].numpy(), y_train=y[:64].numpy())
        layout = folder / "layout"
        compile_module(model, x[:1], resolve_target("fefet_128x128"), layout)
        cost: dict[str, Any] = {"samples": list(sizes)}
        for ideal, chips in ((True, trials), (False, target_trials)):
            if not chips:
                continue
            runs = [run_once(layout, folder / f"cifar-like-{n}.npz", chips, 1, ideal)
                    for n in sizes]
            per_chip = [run["mc"] / chips for run in runs]
            per_sample = (per_chip[1] - per_chip[0]) / (sizes[1] - sizes[0])
            fixed = max(0.0, per_chip[0] - per_sample * sizes[0])
            cost["ideal" if ideal else "target"] = {
                "chips": chips, "seconds_per_chip": per_chip, "fixed_seconds": fixed,
                "seconds_per_sample": per_sample,
                "seconds_per_chip_10k": fixed + per_sample * 10_000,
                "other": max(run["other"] for run in runs)}
        return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mc", type=int, default=400, help="chips per run, ideal periphery")
    parser.add_argument("--target-mc", type=int, default=24,
                        help="chips per run, target DAC/ADC (0: skip)")
    parser.add_argument("--samples", type=int, default=4490)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--model", default="lenet", choices=["lenet", "vgg8"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--paper-cost", type=int, default=256, metavar="SAMPLES",
                        help="also time one process on ResNet-18 with SAMPLES random 3x32x32 "
                        "inputs (0: skip)")
    args = parser.parse_args()
    workers = [int(k) for k in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        layout, data = make_inputs(Path(folder), args.samples, args.model)
        results = [measure(layout, data, args.mc, workers, args.repeats, ideal=True)]
        if args.target_mc:
            results.append(measure(layout, data, args.target_mc, workers, args.repeats,
                                   ideal=False))
    cost = paper_protocol_cost(args.paper_cost, 4, 1) if args.paper_cost else None
    if args.json:
        print(json.dumps({"parallel": results, "resnet18_cost": cost}, indent=1))
        return
    print(f"neftc verify --workers K, one thread per process: {args.model} on fefet_128x128, "
          f"{args.samples} samples, median of {args.repeats} ({platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__})")
    header = (f"{'periphery':<15} {'K':>2} {'chips':>6} {'MC s':>8} {'chips/s':>8} "
              f"{'eff':>5} {'wall s':>7} {'eff wall':>8} {'same chips':>10} {'other':>6}")
    print(header)
    print("-" * len(header))
    for result in results:
        for row in result["rows"]:
            print(f"{result['periphery']:<15} {row['workers']:>2} {result['trials']:>6} "
                  f"{row['mc_seconds']:>8.2f} {row['chips_per_second']:>8.2f} "
                  f"{row['efficiency']:>5.2f} {row['wall_seconds']:>7.2f} "
                  f"{row['efficiency_wall']:>8.2f} {row['same_chips']!s:>10} "
                  f"{row['other']:>6.2f}")
    print("eff: Monte-Carlo chips/s with K processes / (K x with one); eff wall: the same for "
          "the whole command (start-up, layout load and noise-free run included)")
    for result in results:
        for row in result["rows"]:
            if row["workers"] == 2:
                verdict = "PASS" if row["efficiency"] >= 0.8 else "MISS"
                print(f"{verdict}  {result['periphery']}: parallel efficiency with 2 processes "
                      f">= 0.8: {row['efficiency']:.2f}")
            if row["other"] > 0.2:
                print(f"WARNING  {result['periphery']} K={row['workers']}: other processes kept "
                      f"{row['other']:.2f} cores busy; the numbers are not clean")
    if cost is None:
        return
    print(f"\nper-chip cost, one process (one thread), ResNet-18 (11 M weights) on fefet_128x128 "
          f"(default layout), random 3x32x32 inputs, timed at {cost['samples']} samples, fitted "
          f"as fixed + per sample x n:")
    for key in ("ideal", "target"):
        if key in cost:
            c = cost[key]
            print(f"  {key:<6}: {c['seconds_per_chip'][0]:.2f} / {c['seconds_per_chip'][1]:.2f} s "
                  f"per chip ({c['chips']} chips): fixed {c['fixed_seconds']:.2f} s + "
                  f"{1000 * c['seconds_per_sample']:.2f} ms per sample -> "
                  f"{c['seconds_per_chip_10k']:.0f} s per chip on 10,000 samples; 1,000 chips x 8 "
                  f"sigmas = {c['seconds_per_chip_10k'] * 8000 / 3600:.0f} core-hours "
                  f"(other load {c['other']:.2f})")


if __name__ == "__main__":
    main()
