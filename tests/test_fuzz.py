"""The fuzz suite, short budget (issue 10, part 5): hostile inputs through the real CLI.

Every case runs ``python -m neftc ...`` in a subprocess and is checked against the contract of
``tests/fuzz_harness.py``: exit 0 with valid output, or exit 2 with one ``neftc <command>:
error:`` line; no traceback; no file written outside ``-o``; no payload marker (no code from the
input ran); finished within the timeout and the memory limit; bad input not accepted silently.

* ``test_corpus``: the fixed corpus of the most dangerous inputs (code execution through
  layouts, model archives, specs and data; hangs; unbounded memory), one test per entry.
* ``test_mutants``: a Hypothesis-drawn sample of seeded mutants per category (layouts with
  re-signed checksums, model archives, target specs, data files, numeric flags). The draw is
  derandomised so that CI runs the same cases every time; ``scripts/fuzz.py --seed N`` explores
  further. All the sample's violations are reported together, one line each.

42 commands (21 corpus entries, 21 mutants) and 2 checks of the harness itself, at 0.1-3 s
each (subprocess start and the torch import dominate): the file takes about 70 s on 2 idle
cores. The long corpus is ``-m slow``; the long random budget is
``python scripts/fuzz.py --budget-seconds 600 --seed N``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from fuzz_harness import (
    CORPUS,
    MUTANTS,
    SLOW_CORPUS,
    SLOW_KINDS,
    CorpusEntry,
    Seeds,
    build_seeds,
    make_case,
    run_case,
    run_cli,
    stderr_violation,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

#: Mutants drawn per category in the default suite: 21 commands. Flags are cheap (many are
#: refused by argparse before torch is imported); archives and data cost 2-3 s each.
SAMPLE = {"layout": 6, "archive": 2, "spec": 3, "data": 2, "flags": 8}
#: Wall-clock limit per command in the default suite: a valid case takes under 5 s.
TIMEOUT = 30


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    return build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def _report(case, outcome) -> str:
    return (f"{case.name} ({case.note}): {outcome.violation}\n"
            f"    reproduce: {outcome.reproducer()}")


# ------------------------------------------------------------------ the harness sees violations


@pytest.mark.parametrize("stderr,ok", [
    ("neftc inspect: error: layout 'x' does not exist\n", True),
    ("usage: neftc inspect [-h] [--json]\n                     layout\n"
     "neftc inspect: error: the following arguments are required: layout\n", True),
    ("", False),
    ("neftc: error: something\n", False),
    ("UserWarning: careful\nneftc inspect: error: bad\n", False),
    ("neftc inspect: error: bad\n  more detail on a second line\n", False),
    ("neftc inspect: error: one\nneftc inspect: error: two\n", False),
])
def test_the_error_line_rule(stderr: str, ok: bool) -> None:
    assert (stderr_violation("inspect", stderr) is None) == ok


def test_the_harness_sees_code_run(seeds: Seeds, tmp_path: Path) -> None:
    """The same hostile archive with --trust-model: torch runs the payload, and the harness
    must report the marker (so the corpus's archives are live, and the check works)."""
    case = CORPUS[[e.name for e in CORPUS].index("archive-pickle-sample-inputs")].build(
        seeds, tmp_path / "case")
    outcome = run_cli([*case.args, "--trust-model"], case.work, timeout=TIMEOUT,
                      markers=case.markers)
    assert outcome.violation is not None and "payload marker" in outcome.violation, outcome


def test_the_harness_sees_files_written_elsewhere(seeds: Seeds, tmp_path: Path) -> None:
    """calibrate without -o rewrites its layout in place: outside -o, so a violation."""
    case = make_case("flags", "flag", 0, seeds, tmp_path / "case", command="calibrate",
                     flag="--samples", value="8")
    outcome = run_cli([a for a in case.args if a not in ("-o", "cal")], case.work,
                      timeout=TIMEOUT)
    assert outcome.violation is not None and "outside -o" in outcome.violation, outcome


# ------------------------------------------------------------------------------- the budget


@pytest.mark.parametrize("entry", CORPUS, ids=lambda e: e.name)
def test_corpus(entry: CorpusEntry, seeds: Seeds, tmp_path: Path) -> None:
    case = entry.build(seeds, tmp_path / "case")
    outcome = run_case(case, timeout=min(entry.timeout, TIMEOUT))
    assert outcome.ok, _report(case, outcome)


@pytest.mark.parametrize("category", sorted(SAMPLE))
def test_mutants(category: str, seeds: Seeds, tmp_path: Path) -> None:
    kinds = sorted(k for k in MUTANTS[category] if (category, k) not in SLOW_KINDS)
    counter = itertools.count()
    results = []

    @settings(max_examples=SAMPLE[category], derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(kinds), seed=st.integers(0, 2**31 - 1))
    def run(kind: str, seed: int) -> None:
        case = make_case(category, kind, seed, seeds, tmp_path / f"case-{next(counter)}")
        results.append((case, run_case(case, timeout=TIMEOUT)))

    run()
    assert results, "Hypothesis drew no case"
    for case, outcome in results:  # shown by `pytest -rP`
        print(f"{case.name} ({case.note}): {outcome.describe()}")
    bad = [_report(case, outcome) for case, outcome in results if not outcome.ok]
    assert not bad, (f"{len(bad)} of {len(results)} {category} mutants break the contract:\n"
                     + "\n".join(bad))


@pytest.mark.slow
@pytest.mark.parametrize("entry", SLOW_CORPUS, ids=lambda e: e.name)
def test_slow_corpus(entry: CorpusEntry, seeds: Seeds, tmp_path: Path) -> None:
    case = entry.build(seeds, tmp_path / "case")
    outcome = run_case(case)
    assert outcome.ok, _report(case, outcome)


@pytest.mark.slow
@pytest.mark.parametrize("category,kind", [(c, k) for c in sorted(MUTANTS)
                                           for k in sorted(MUTANTS[c])])
def test_slow_every_kind(category: str, kind: str, seeds: Seeds, tmp_path: Path) -> None:
    """Every mutant kind with five seeds."""
    bad = []
    for seed in range(5):
        case = make_case(category, kind, seed, seeds, tmp_path / f"case-{seed}")
        outcome = run_case(case)
        if not outcome.ok:
            bad.append(_report(case, outcome))
    assert not bad, "\n".join(bad)
