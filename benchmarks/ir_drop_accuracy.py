"""How close is the first-order IR-drop model to the exact nodal solve of the crossbar?

For square arrays of ``--sizes`` wordlines x bitlines, each wire segment ``r`` ohms with
``r * g_max`` over ``--r-gmax``, ``--trials`` arrays of conductances at random levels (uniform
over ``--levels`` levels between ``g_min = --g-ratio * g_max`` and ``g_max``) each driven with
``--inputs`` random binary input vectors (each row on with probability 1/2; idle rows at 0 V):
the relative error of the bitline currents, ``||I - I_nodal|| / ||I_nodal||`` per input vector,
of the model (``neftc.runtime.ir_drop.effective_conductance``, ``G / (1 + d)``), of its
linear first-order form ``G (1 - d)`` and of ideal wires (``I = V G``). The nodal solve is
tests/ir_nodal_reference.py (dense numpy). Prints the table (mean and max over every input
vector), then for each size the largest ``r * g_max`` of the grid where the model's max error
stays under 1 % and 5 %, and the model's time per 128 x 128 array.

    python benchmarks/ir_drop_accuracy.py                    # ~15 s on one core
    python benchmarks/ir_drop_accuracy.py --sizes 8 16 --trials 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import ir_nodal_reference as nodal  # the test suite's independent reference

from neftc.runtime.ir_drop import effective_conductance, relative_drop

R_GMAX = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
G_MAX = 1e-5  # siemens; only r * g_max and g_min / g_max matter


def relative_error(currents: np.ndarray, exact: np.ndarray) -> np.ndarray:
    return np.linalg.norm(currents - exact, axis=-1) / np.linalg.norm(exact, axis=-1)


def measure(size: int, r_gmax: float, args: argparse.Namespace,
            rng: np.random.Generator) -> dict[str, float]:
    r = r_gmax / G_MAX
    g_min = args.g_ratio * G_MAX
    errors: dict[str, list[np.ndarray]] = {"model": [], "linear": [], "ideal": []}
    for _ in range(args.trials):
        levels = rng.integers(0, args.levels, (size, size))
        g = g_min + (G_MAX - g_min) * levels / (args.levels - 1)
        v = rng.integers(0, 2, (args.inputs, size)).astype(float)
        v = v[v.sum(axis=1) > 0]
        exact = nodal.bitline_currents(g, v, r)
        gt = torch.from_numpy(g)
        forms = {"model": effective_conductance(gt, r).numpy(),
                 "linear": (gt * (1 - relative_drop(gt, r))).numpy(), "ideal": g}
        for name, g_eff in forms.items():
            errors[name].append(relative_error(v @ g_eff, exact))
    row: dict[str, float] = {"size": size, "r_gmax": r_gmax}
    for name, values in errors.items():
        every = np.concatenate(values)
        row[f"{name}_mean"] = float(every.mean())
        row[f"{name}_max"] = float(every.max())
    return row


def model_time_s(repeats: int = 20) -> float:
    """Seconds per 128 x 128 array of ``effective_conductance`` (float64, one thread)."""
    g = torch.rand(64, 128, 128, dtype=torch.float64) * G_MAX
    effective_conductance(g, 1.0)
    start = time.perf_counter()
    for _ in range(repeats):
        effective_conductance(g, 1.0)
    return (time.perf_counter() - start) / (repeats * g.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--r-gmax", type=float, nargs="+", default=list(R_GMAX))
    parser.add_argument("--trials", type=int, default=4, help="random arrays per point")
    parser.add_argument("--inputs", type=int, default=64, help="binary input vectors per array")
    parser.add_argument("--levels", type=int, default=4, help="cell levels (2-bit cells: 4)")
    parser.add_argument("--g-ratio", type=float, default=0.1,
                        help="g_min / g_max (0.1: the rram preset's 2 / 20 uS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON record per point")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    rows = [measure(size, r_gmax, args, rng) for size in args.sizes for r_gmax in args.r_gmax]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"relative error of the bitline currents vs the nodal solve ({args.trials} arrays x "
          f"{args.inputs} binary inputs per point, {args.levels} levels, g_min/g_max "
          f"{args.g_ratio:g}); mean / max")
    print(f"{'size':>4} {'r*g_max':>8} {'model G/(1+d)':>21} {'linear G(1-d)':>21} "
          f"{'ideal wires':>21}")
    for row in rows:
        cells = "".join(f" {row[f'{n}_mean']:9.2e} / {row[f'{n}_max']:8.2e}"
                        for n in ("model", "linear", "ideal"))
        print(f"{row['size']:4d} {row['r_gmax']:8.0e}{cells}")
    for size in args.sizes:
        for bound in (0.01, 0.05):
            ok = [row["r_gmax"] for row in rows if row["size"] == size]
            ok = [x for x in ok if all(row["model_max"] < bound for row in rows
                                       if row["size"] == size and row["r_gmax"] <= x)]
            shown = f"{max(ok):g}" if ok else "none of the grid"
            print(f"{size}x{size}: max error < {bound:.0%} up to r*g_max = {shown}")
    print(f"model: {model_time_s() * 1e6:.1f} us per 128x128 array (float64, one thread)")


if __name__ == "__main__":
    main()
