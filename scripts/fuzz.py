"""The long fuzz budget: hostile layouts, model archives, specs, data and flags through the CLI.

    python scripts/fuzz.py --budget-seconds 600 --seed 1

Runs the fixed corpus of tests/fuzz_harness.py (code execution, file writes, hangs) and then
seeded random mutants, round-robin over the categories, until the budget is spent; each through
``neftc`` in a subprocess checked against the contract of ``tests/fuzz_harness.py``. Prints a
summary table per category (cases, exit 0, exit 2, violations) and every violation with the
folder that reproduces it (kept on disk; the folders of passing cases are deleted unless
``--keep-all``). Exit status 1 when there is a violation. The same ``--seed`` gives the same
cases in the same order (how many depends on the budget and the machine's speed).

The short budget is ``tests/test_fuzz.py``, part of ``python -m pytest``; docs/security.md
describes both.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HARNESS = Path(__file__).resolve().parents[1] / "tests" / "fuzz_harness.py"


def _harness() -> ModuleType:
    """tests/fuzz_harness.py, loaded from its file (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fuzz_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_harness"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-seconds", type=float, default=600,
                        help="stop starting new cases after this many seconds (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case sequence")
    parser.add_argument("--out", type=Path, help="folder for the seeds and the reproducers "
                        "(default: neftc-fuzz-seed-N in the temporary directory)")
    parser.add_argument("--category", action="append", metavar="CAT",
                        help="only these categories (repeatable): layout, archive, spec, data, "
                        "flags")
    parser.add_argument("--timeout", type=float, default=60,
                        help="wall-clock limit of one command in seconds (default 60)")
    parser.add_argument("--corpus", choices=["short", "long", "none"], default="short",
                        help="fixed cases run before the random ones: short (the corpus of "
                        "the default test suite, default), long (also the slow corpus, a few "
                        "hundred cases), none")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case")
    parser.add_argument("--keep-all", action="store_true",
                        help="keep the folders of passing cases too")
    args = parser.parse_args(argv)
    if args.budget_seconds <= 0 or args.timeout <= 0:
        parser.error("--budget-seconds and --timeout must be positive")

    fh = _harness()
    categories = args.category or list(fh.MUTANTS)
    unknown = sorted(set(categories) - set(fh.MUTANTS))
    if unknown:
        parser.error(f"unknown categories {unknown}; choose from {list(fh.MUTANTS)}")
    out = (args.out or Path(tempfile.gettempdir()) / f"neftc-fuzz-seed-{args.seed}").resolve()
    if out.exists() and any(p.name != "seeds" for p in out.iterdir()):
        parser.error(f"{out} holds an earlier run; remove it or give another --out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print(f"fuzzing for {args.budget_seconds:g} s, seed {args.seed}, in {out}", flush=True)
    seeds = fh.build_seeds(out / "seeds")

    rows = {c: {"cases": 0, "exit-0": 0, "exit-2": 0, "violation": 0, "seconds": 0.0}
            for c in categories}
    violations: list[dict[str, str]] = []
    rng = random.Random(args.seed)

    def planned():
        """(folder name, builder) pairs: the corpus, then random mutants without end."""
        corpus = {"short": fh.CORPUS, "long": fh.CORPUS + fh.SLOW_CORPUS, "none": []}
        for entry in corpus[args.corpus]:
            if entry.category in categories:
                yield f"corpus-{entry.name}", functools.partial(entry.build, seeds)
        n = 0
        while True:
            category = categories[n % len(categories)]
            kind = rng.choice(sorted(fh.MUTANTS[category]))
            case_seed = rng.randrange(2**31)
            n += 1
            yield (f"{n:05d}-{category}-{kind}-{case_seed}",
                   functools.partial(fh.make_case, category, kind, case_seed, seeds))

    for name, build in planned():
        if time.monotonic() - start > args.budget_seconds:
            break
        work = out / name
        try:
            case = build(work)
        except Exception as exc:
            print(f"  {name}: the generator failed: {type(exc).__name__}: {exc}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
            continue
        outcome = fh.run_case(case, timeout=args.timeout)
        row = rows[case.category]
        row["cases"] += 1
        row["seconds"] += outcome.seconds
        if args.verbose:
            print(f"  {case.name} ({case.note}): {outcome.describe()}", flush=True)
        row[outcome.kind_of_exit] = row.get(outcome.kind_of_exit, 0) + 1
        if outcome.ok:
            if not args.keep_all:
                shutil.rmtree(work, ignore_errors=True)
            continue
        record = {"case": case.name, "note": case.note, "reason": outcome.violation or "",
                  "folder": str(work), "command": outcome.reproducer()}
        violations.append(record)
        (work / "VIOLATION.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"  VIOLATION {case.name} ({case.note}): {outcome.violation}", flush=True)

    elapsed = time.monotonic() - start
    print(f"\n{'category':<10} {'cases':>6} {'exit 0':>7} {'exit 2':>7} {'violations':>11} "
          f"{'seconds':>8}")
    totals = {"cases": 0, "exit-0": 0, "exit-2": 0, "violation": 0, "seconds": 0.0}
    for category, row in rows.items():
        print(f"{category:<10} {row['cases']:>6} {row['exit-0']:>7} {row['exit-2']:>7} "
              f"{row['violation']:>11} {row['seconds']:>8.0f}")
        for key in totals:
            totals[key] += row[key]
    print(f"{'total':<10} {totals['cases']:>6} {totals['exit-0']:>7} {totals['exit-2']:>7} "
          f"{totals['violation']:>11} {totals['seconds']:>8.0f}   (wall {elapsed:.0f} s)")
    if violations:
        print(f"\n{len(violations)} violation(s); each folder reproduces its case:")
        for record in violations:
            print(f"- {record['case']} ({record['note']}): {record['reason']}\n"
                  f"    {record['command']}\n    folder: {record['folder']}")
    (out / "summary.json").write_text(json.dumps(
        {"seed": args.seed, "budget_seconds": args.budget_seconds, "seconds": elapsed,
         "categories": rows, "violations": violations}, indent=1) + "\n")
    print(f"\nsummary: {out / 'summary.json'}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
