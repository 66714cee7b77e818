"""Compile time and peak memory of ``neftc compile`` as the model grows.

For CIFAR-style ResNet-18 at width 16, 32 and 64 (about 0.7 M, 2.8 M and 11.2 M weights; input
3x32x32, 10 classes) the script saves the model with ``torch.export.save`` into a temporary
directory, then, ``--repeats`` times and interleaved, runs in a FRESH subprocess each:

- compile:  ``neftc compile model.pt2 --target fefet_128x128 -o DIR -q`` (the real CLI, interpreter
  start and imports included), into a directory that does not exist yet;
- baseline: ``import torch; torch.export.load(path).module()`` and one forward pass under
  ``torch.no_grad()``: the unavoidable cost of loading the program at all.

Measurement: each child is started with ``subprocess.Popen`` and reaped with ``os.wait4``, which
returns the rusage of exactly that child, so ``ru_maxrss`` is that process's own peak resident set
(Linux reports KiB; the tables print MB = 10^6 bytes) and ``ru_utime + ru_stime`` its CPU time. Wall
time is ``time.perf_counter`` from just before ``Popen`` to the return of ``wait4``. The tables show
the median of the repeats (the machine may be shared).

Shared machines: each measurement first waits (up to ``--quiet-wait`` s) for a second in which
other processes use under 0.1 core, and records how many cores other processes kept busy while it
ran (from ``/proc/stat``; the "other" column). On 2 cores a busy neighbour can double the compile
time (see docs/benchmarks.md); ``--threads 1`` sets OMP_NUM_THREADS=1 for the children to compare.
Before measuring, ``--warmup`` (default 1) untimed compile + baseline runs of the largest model keep
cold-cache first runs out of the medians. Unless ``--no-breakdown`` is given, one more child per
size runs the compile in-process (``compile_model``) with a pass instrument timing each pass (its
run and the verification the pass manager runs after it) and timers around the public stage
functions (model loading, layout building, writing), and records the peak RSS reached by the end
of each stage.

Targets (from the issue): ResNet-18 (11 M weights) on fefet_128x128 compiles in under 10 s and
2 GB on 2 cores, and the cost grows linearly with the weight count. They are printed as PASS/MISS
lines, never asserted.

    python benchmarks/compile_time.py [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import busy_cpu_seconds  # benchmarks/_machine.py, beside this script

TARGET_SECONDS = 10.0
TARGET_MB = 2000.0  # 2 GB
OTHER_WORK_WARNING = 0.2  # cores busy with other processes (median) above which times are suspect
LINEAR_TOLERANCE = 1.5  # last segment's marginal cost per weight may be at most 1.5x the first's

BASELINE_CODE = """
import sys
import torch
program = torch.export.load(sys.argv[1])
module = program.module()
with torch.no_grad():
    module(torch.randn(1, 3, 32, 32))
"""

# Runs the compile in-process (compile_model, as the CLI calls it), with a pass instrument timing
# each pass (run and the verification after it) and timers around the public stage functions
# (wrapping works because those names are looked up as module globals at call time).
BREAKDOWN_CODE = r"""
import importlib, json, resource, sys, time
from pathlib import Path
T0 = time.perf_counter()
import torch
T_TORCH = time.perf_counter()
import neftc.driver.compiler, neftc.flow.report, neftc.targets

stages = {}   # name -> [seconds, calls, peak RSS KiB when it last ended]

def rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def record(name, seconds):
    entry = stages.setdefault(name, [0.0, 0, 0])
    entry[0] += seconds
    entry[1] += 1
    entry[2] = rss_kib()

def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record(name, time.perf_counter() - start)
    return wrapper

def wrap(module_name, attr, label):
    # time a public module function; skip names this version of neftc lacks
    try:
        owner = importlib.import_module(module_name)
        setattr(owner, attr, timed(label, getattr(owner, attr)))
    except (ImportError, AttributeError):
        pass

class StageTimer:
    # neftc.ir.pass_manager.PassInstrument: each pass's run and verification, by pass name
    def before_pass(self, pass_, gm):
        pass

    def after_pass(self, pass_, gm, result, seconds):
        record("pass: " + pass_.name + " (run + verify)", seconds)

wrap("neftc.driver.compiler", "load_model", "load: load_model (export load, trace)")
wrap("neftc.driver.compiler", "build_layout", "emit: build_layout")
wrap("neftc.driver.compiler", "write_layout", "emit: write_layout (json, sha256, write)")
wrap("neftc.flow.report", "write_layout_reports", "emit: write_layout_reports")

model, target, out = sys.argv[1:4]
T_RUN = time.perf_counter()
neftc.driver.compiler.compile_model(model, neftc.targets.resolve_target(target), Path(out),
                                    instruments=[StageTimer()])
T_END = time.perf_counter()
out = {
    "rc": 0,
    "import torch": [T_TORCH - T0, 1, 0],
    "import neftc (and what the timers wrap)": [T_RUN - T_TORCH, 1, 0],
    **stages,
    "cli total (after imports)": [T_END - T_RUN, 1, rss_kib()],
}
sys.stderr.write("BREAKDOWN " + json.dumps(out) + "\n")
"""


_busy_cpu_seconds = busy_cpu_seconds


QUIET_WAIT_S = 0.0  # set from --quiet-wait


def wait_until_quiet(max_wait: float, threshold: float = 0.1) -> float:
    """Wait (at most ``max_wait`` s) for one second in which other processes use under
    ``threshold`` cores; return the seconds waited."""
    start = time.perf_counter()
    if _busy_cpu_seconds() != _busy_cpu_seconds():  # NaN: no /proc/stat, cannot tell
        return 0.0
    while time.perf_counter() - start < max_wait:
        before = _busy_cpu_seconds()
        time.sleep(1.0)
        if _busy_cpu_seconds() - before < threshold:
            break
    return time.perf_counter() - start


def measure(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` in a fresh process; its wall time, CPU time and own peak RSS, and how many
    cores other work on the machine kept busy meanwhile."""
    if QUIET_WAIT_S > 0:
        wait_until_quiet(QUIET_WAIT_S)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0 = _busy_cpu_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy1 = _busy_cpu_seconds()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{stderr[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6,
            "other_cores": max(0.0, (busy1 - busy0 - cpu) / wall), "stderr": stderr}


def neftc_command() -> list[str]:
    script = shutil.which("neftc", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "neftc"]


def save_models(widths: list[int], root: Path) -> list[dict]:
    import torch

    from neftc.frontend.zoo import ResNet18

    models = []
    for width in widths:
        torch.manual_seed(0)
        model = ResNet18((3, 32, 32), 10, width=width).eval()
        path = root / f"resnet18_w{width}.pt2"
        program = torch.export.export(model, (torch.randn(1, 3, 32, 32),))
        torch.export.save(program, str(path))
        models.append({
            "name": f"resnet18-w{width}", "width": width, "path": path,
            "weights": sum(p.numel() for p in model.parameters()),
            "file_mb": path.stat().st_size / 1e6,
        })
    return models


def crossbar_weights(layout_dir: Path) -> int:
    return int(json.loads((layout_dir / "layout.json").read_text())["summary"]["weights"])


def run_size(model: dict, root: Path, repeats: int, target: str, breakdown: bool,
             log, env: dict[str, str] | None = None) -> dict:
    compile_runs, baseline_runs = [], []
    for r in range(repeats):
        out_dir = root / f"out-{model['name']}-{r}"
        cmd = [*neftc_command(), "compile", str(model["path"]), "--target", target,
               "-o", str(out_dir), "-q"]
        run = measure(cmd, root, env)
        model.setdefault("crossbar_weights", crossbar_weights(out_dir))
        model.setdefault("layout_mb", sum(f.stat().st_size for f in out_dir.iterdir()) / 1e6)
        shutil.rmtree(out_dir)
        compile_runs.append(run)
        base = measure([sys.executable, "-c", BASELINE_CODE, str(model["path"])], root, env)
        baseline_runs.append(base)
        log(f"  {model['name']} repeat {r + 1}/{repeats}: compile {run['wall_s']:.2f} s "
            f"({run['peak_rss_mb']:.0f} MB), baseline {base['wall_s']:.2f} s "
            f"({base['peak_rss_mb']:.0f} MB); other work kept {run['other_cores']:.2f} / "
            f"{base['other_cores']:.2f} cores busy")
    result = {
        "name": model["name"], "width": model["width"], "weights": model["weights"],
        "crossbar_weights": model["crossbar_weights"], "model_file_mb": model["file_mb"],
        "layout_mb": model["layout_mb"],
        "compile": _stats(compile_runs), "baseline": _stats(baseline_runs),
    }
    if breakdown:
        runs = []
        for r in range(repeats):
            out_dir = root / f"out-{model['name']}-breakdown-{r}"
            cmd = [sys.executable, "-c", BREAKDOWN_CODE, str(model["path"]), target,
                   str(out_dir)]
            run = measure(cmd, root, env)
            shutil.rmtree(out_dir, ignore_errors=True)
            line = next(s for s in run["stderr"].splitlines() if s.startswith("BREAKDOWN "))
            data = json.loads(line[len("BREAKDOWN "):])
            data.pop("rc")
            runs.append((run, data))
        med = statistics.median
        result["breakdown"] = {
            "runs": repeats,
            "wall_s": med(run["wall_s"] for run, _ in runs),
            "peak_rss_mb": med(run["peak_rss_mb"] for run, _ in runs),
            "other_cores": med(run["other_cores"] for run, _ in runs),
            "stages": {name: {"seconds": med(d[name][0] for _, d in runs),
                              "calls": runs[0][1][name][1],
                              "peak_rss_mb": med(d[name][2] for _, d in runs) * 1024 / 1e6}
                       for name in runs[0][1]},
        }
    return result


def _stats(runs: list[dict]) -> dict:
    out = {}
    for key in ("wall_s", "cpu_s", "peak_rss_mb", "other_cores"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                    "all": values}
    return out


def _own_work(result: dict) -> float:
    stages = result["breakdown"]["stages"]
    load = sum(v["seconds"] for k, v in stages.items() if k.startswith("load: "))
    return stages["cli total (after imports)"]["seconds"] - load


def checks(results: list[dict]) -> list[dict]:
    largest = max(results, key=lambda r: r["weights"])
    out = [
        {"name": f"{largest['name']} compile time < {TARGET_SECONDS:g} s",
         "value": largest["compile"]["wall_s"]["median"], "unit": "s",
         "ok": largest["compile"]["wall_s"]["median"] < TARGET_SECONDS},
        {"name": f"{largest['name']} peak RSS < {TARGET_MB:g} MB",
         "value": largest["compile"]["peak_rss_mb"]["median"], "unit": "MB",
         "ok": largest["compile"]["peak_rss_mb"]["median"] < TARGET_MB},
    ]
    if len(results) >= 3:
        # Linear means a constant marginal cost per weight: compare the slope of the last segment
        # with the slope of the first one (a fixed start-up cost does not change slopes). The
        # end-to-end times of the small models differ by less than their run-to-run noise, so the
        # verdict uses neftc's own work from the breakdown when there is one: the in-process
        # compile minus the model load (torch.export.load and the file's sha256).
        w = [r["weights"] / 1e6 for r in results]
        if all("breakdown" in r for r in results):
            y = [_own_work(r) for r in results]
            what = "neftc's own work (passes, verify, emit; in-process)"
        else:
            y = [r["compile"]["wall_s"]["median"] for r in results]
            what = "end-to-end compile"
        first = (y[1] - y[0]) / (w[1] - w[0])
        last = (y[-1] - y[-2]) / (w[-1] - w[-2])
        ratio = last / first if first > 0 else float("inf")
        per_m = ", ".join(f"{t / m:.3f}" for t, m in zip(y, w))
        out.append({"name": f"linear time, {what}: marginal s/M-weight of the last segment <= "
                            f"{LINEAR_TOLERANCE:g}x the first's ({first:.3f} -> {last:.3f} s/M; "
                            f"per M weights: {per_m} s)",
                    "value": ratio, "unit": "x", "ok": ratio <= LINEAR_TOLERANCE})
    if len(results) >= 2:
        # Peak RSS is max(fixed torch + export-load footprint, that + per-weight cost): the small
        # models stay under the fixed part, so only the last segment's slope is meaningful.
        w = [r["weights"] / 1e6 for r in results]
        m = [r["compile"]["peak_rss_mb"]["median"] for r in results]
        per_m = (m[-1] - m[-2]) / (w[-1] - w[-2])
        fixed = m[-1] - per_m * w[-1]
        fits = (TARGET_MB - fixed) / per_m if per_m > 0 else float("inf")
        out.append({"name": f"memory: {per_m:.1f} MB per extra M weights (= bytes/weight) over a "
                            f"fixed ~{fixed:.0f} MB; {TARGET_MB:g} MB would be reached near "
                            f"{fits:.0f} M weights",
                    "value": per_m, "unit": "MB/M", "ok": None})
    return out


def machine() -> dict:
    import numpy
    import torch

    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "numpy": numpy.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu": _cpu_model(),
        "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def format_table(results: list[dict]) -> str:
    head = (f"{'model':<15} {'weights':>8} {'compile s':>10} {'(min-max)':>12} {'cpu s':>6} "
            f"{'peak MB':>8} {'base s':>7} {'base MB':>8} {'ratio':>6} {'s/M-w':>6} "
            f"{'(c-b)/M-w':>9} {'other':>5}")
    lines = [head, "-" * len(head)]
    for r in results:
        c, b = r["compile"], r["baseline"]
        mw = r["weights"] / 1e6
        cs, bs = c["wall_s"]["median"], b["wall_s"]["median"]
        spread = f"{c['wall_s']['min']:.2f}-{c['wall_s']['max']:.2f}"
        lines.append(
            f"{r['name']:<15} {mw:>7.2f}M {cs:>10.2f} {spread:>12} {c['cpu_s']['median']:>6.2f} "
            f"{c['peak_rss_mb']['median']:>8.0f} {bs:>7.2f} {b['peak_rss_mb']['median']:>8.0f} "
            f"{cs / bs:>6.2f} {cs / mw:>6.2f} {(cs - bs) / mw:>9.2f} "
            f"{c['other_cores']['median']:>5.2f}")
    return "\n".join(lines)


def format_breakdown(results: list[dict]) -> str:
    with_bd = [r for r in results if "breakdown" in r]
    if not with_bd:
        return ""
    names: list[str] = []
    for r in with_bd:
        for name in r["breakdown"]["stages"]:
            if name not in names:
                names.append(name)
    width = max(len(n) for n in names)
    head = f"{'stage (in-process, median of runs)':<{width}} " + " ".join(
        f"{r['name']:>22}" for r in with_bd)
    lines = [head, f"{'':<{width}} " + " ".join(f"{'s':>8} {'peak MB so far':>13}"
                                                  for _ in with_bd), "-" * len(head)]
    for name in names:
        cells = []
        for r in with_bd:
            st = r["breakdown"]["stages"].get(name)
            if st is None:
                cells.append(f"{'-':>8} {'-':>13}")
            else:
                mb = f"{st['peak_rss_mb']:.0f}" if st["peak_rss_mb"] else "-"
                cells.append(f"{st['seconds']:>8.2f} {mb:>13}")
        lines.append(f"{name:<{width}} " + " ".join(cells))
    lines.append(f"{'child wall (start to exit)':<{width}} " + " ".join(
        f"{r['breakdown']['wall_s']:>8.2f} {r['breakdown']['peak_rss_mb']:>13.0f}"
        for r in with_bd))
    lines.append(f"{'other cores busy (median)':<{width}} " + " ".join(
        f"{r['breakdown']['other_cores']:>8.2f} {'':>13}" for r in with_bd))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median "
                        "reported; default 3)")
    parser.add_argument("--widths", default="16,32,64",
                        help="ResNet-18 widths, comma-separated, growing (default 16,32,64)")
    parser.add_argument("--target", default="fefet_128x128")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the per-stage breakdown run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed compile + baseline runs "
                        "of the largest model first (default 1)")
    parser.add_argument("--threads", type=int, help="set OMP_NUM_THREADS for the measured "
                        "processes (default: unset, torch picks one thread per core)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, metavar="S",
                        help="before each measurement wait up to S seconds for a second in which "
                        "other processes use under 0.1 core (default 60; 0: never wait)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    widths = [int(w) for w in args.widths.split(",")]
    global QUIET_WAIT_S
    QUIET_WAIT_S = args.quiet_wait
    env = None
    if args.threads is not None:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
               "MKL_NUM_THREADS": str(args.threads)}

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine()
    load_before = os.getloadavg()
    log(f"machine: {info['nproc']} CPUs, torch {info['torch']}, load average {load_before[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="neftc-bench-") as tmp:
        root = Path(tmp)
        models = save_models(widths, root)
        largest = max(models, key=lambda m: m["weights"])
        for i in range(args.warmup):
            log(f"  warm-up {i + 1}/{args.warmup}: {largest['name']}")
            run_size(dict(largest), root, 1, args.target, False, lambda _: None, env)
        results = [run_size(m, root, args.repeats, args.target, args.breakdown, log, env)
                   for m in models]
    load_after = os.getloadavg()
    report = {
        "benchmark": "compile_time", "target": args.target, "repeats": args.repeats,
        "warmup": args.warmup, "omp_num_threads": args.threads,
        "command": "neftc compile MODEL.pt2 --target " + args.target + " -o DIR -q",
        "machine": info, "load_average": {"before": load_before, "after": load_after},
        "results": results, "checks": checks(results),
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"neftc compile --target {args.target}: median of {args.repeats} fresh-process runs "
          f"({info['nproc']} CPUs, torch {info['torch']}, OMP_NUM_THREADS "
          f"{args.threads if args.threads is not None else 'unset'}, load average "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f})\n")
    print(format_table(results))
    print("\nweights: all model parameters; ratio: compile / baseline (export load + one "
          "forward);\ns/M-w: compile seconds per million weights; (c-b)/M-w: the same for "
          "compile minus baseline;\nother: cores kept busy by other processes during the "
          "compile runs (median; /proc/stat).")
    breakdown = format_breakdown(results)
    if breakdown:
        print("\n" + breakdown)
    print()
    busiest = max(r["compile"]["other_cores"]["median"] for r in results)
    if busiest > OTHER_WORK_WARNING:
        print(f"WARNING: other work kept up to {busiest:.2f} cores busy during the compile runs; "
              "times are inflated (with one torch thread per core, a core taken by another "
              "process stalls torch's thread pool; compare --threads 1). Re-run on a quiet "
              "machine.")
    for check in report["checks"]:
        verdict = "INFO" if check["ok"] is None else "PASS" if check["ok"] else "MISS"
        print(f"{verdict}  {check['name']}: "
              f"{check['value']:.2f} {check['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
