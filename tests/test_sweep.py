"""``neftc sweep``: a resumable Monte-Carlo grid in one SQLite store.

Resuming recomputes nothing; each stored chip equals ``neftc verify --json``'s; a sweep
SIGKILLed twice and resumed ends with exactly the chips of an uninterrupted run; two sweeps at
once on one store and ``--workers 2`` give the same rows; the report's numbers are ``summarize``
of the stored accuracies; files that are not a store are refused."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neftc.cli.main import main
from neftc.flow.sweep import SweepSettings, run_sweep
from neftc.flow.sweep_store import STORE_VERSION, StoreError, SweepStore
from neftc.runtime.emulator import Emulator
from neftc.runtime.montecarlo import summarize

#: A safety limit for waiting on a subprocess (never an assertion about speed).
WAIT_S = 300


@pytest.fixture
def layout(trained_lenet_layout: Path) -> Path:
    return trained_lenet_layout  # read only: --no-report, and sweeps write their own store


def rows(store: Path) -> list[tuple]:
    """Every stored chip, in key order (read with plain sqlite3, not the code under test)."""
    with sqlite3.connect(store) as db:
        return db.execute("SELECT * FROM chips ORDER BY layout_sha256, data_sha256, sigma, "
                          "noise, periphery, seed, chip").fetchall()


def integrity(store: Path) -> str:
    with sqlite3.connect(store) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _sweep_cmd(layout: Path, store: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "neftc", "sweep", str(layout), "--data", "digits",
            "--store", str(store), "-q", *argv]


# A grid of ideal-periphery cells: fast chips, two sigmas, two noise modes.
GRID = ("--sigma", "0.1", "--sigma", "0.25", "--noise", "cell", "--noise", "off",
        "--periphery", "ideal")


def test_resume_recomputes_nothing(layout, tmp_path, monkeypatch) -> None:
    made: list[int] = []
    instance = Emulator.instance

    def counting(self: Emulator, chip: int):  # observe the chip instances made, change nothing
        made.append(chip)
        return instance(self, chip)

    monkeypatch.setattr(Emulator, "instance", counting)
    store = tmp_path / "s.db"
    settings = SweepSettings(sigmas=(0.1, 0.3), peripheries=("ideal",), chips=4)
    first = run_sweep([layout], "digits", store, settings)
    assert (first.cells, first.chips, first.stored_before, first.computed, first.added) == (
        2, 8, 0, 8, 8)
    assert sorted(made) == sorted([0, 1, 2, 3] * 2)
    before = rows(store)
    made.clear()
    again = run_sweep([layout], "digits", store, settings)
    assert made == [] and again.computed == 0 and again.stored_before == 8
    assert rows(store) == before
    more = run_sweep([layout], "digits", store, SweepSettings(
        sigmas=(0.1, 0.3), peripheries=("ideal",), chips=6))
    assert sorted(made) == [4, 4, 5, 5] and more.computed == 4 and more.added == 4
    assert len(rows(store)) == 12 and integrity(store) == "ok"


@pytest.mark.parametrize("periphery", ["ideal", "target"])
def test_chips_equal_verify(layout, tmp_path, capsys, periphery) -> None:
    store = tmp_path / "s.db"
    flag = ["--ideal-periphery"] if periphery == "ideal" else []
    assert main(["sweep", str(layout), "--data", "digits", "--store", str(store), "--mc", "5",
                 "--sigma", "0.2", "--periphery", periphery, "-q"]) == 0
    capsys.readouterr()
    assert main(["verify", str(layout), "--data", "digits", "--mc", "5", "--sigma", "0.2",
                 "--json", "--no-report", "-q", *flag]) == 0
    verified = json.loads(capsys.readouterr().out)["results"][0]
    stored = rows(store)
    assert [r[6] for r in stored] == list(range(5))
    assert [r[7] for r in stored] == verified["chip_accuracies"]  # exactly
    with sqlite3.connect(store) as db:
        (noise_free,) = db.execute("SELECT accuracy FROM noise_free").fetchone()
    assert noise_free == verified["quantized_accuracy"]
    # verify's mean confidence is the chip-order mean of the stored per-chip confidences.
    assert sum(r[8] for r in stored) / 5 == pytest.approx(
        verified["uncertainty"]["mean_confidence"], rel=1e-12)


def _wait_rows(process: subprocess.Popen, store: Path, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it could be killed"
        try:  # (sqlite3.connect would create the file: wait for the sweep to)
            if store.exists() and len(rows(store)) >= count:
                return
        except sqlite3.Error:  # not created yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"no {count} rows within {WAIT_S} s")


def test_killed_twice_and_resumed_equals_one_run(layout, tmp_path, capsys) -> None:
    argv = (*GRID, "--mc", "20")  # 4 cells x 20 chips
    reference = tmp_path / "reference.db"
    assert main(["sweep", str(layout), "--data", "digits", "--store", str(reference), "-q",
                 *argv]) == 0
    expected = rows(reference)
    assert len(expected) == 80
    store = tmp_path / "killed.db"
    points = random.Random(14)
    reached = 0
    for _ in range(2):
        reached += points.randint(3, 25)
        process = subprocess.Popen(_sweep_cmd(layout, store, *argv), env=_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_rows(process, store, reached)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(WAIT_S)
        reached = len(rows(store))
        assert 0 < reached < 80 and integrity(store) == "ok"
    capsys.readouterr()
    assert main(["sweep", str(layout), "--data", "digits", "--store", str(store), "-q",
                 *argv]) == 0
    assert f"{reached} already stored, {80 - reached} computed" in capsys.readouterr().out
    assert rows(store) == expected  # each chip once, the same values
    assert integrity(store) == "ok"


@pytest.mark.slow
def test_two_sweeps_at_once(layout, tmp_path) -> None:
    argv = (*GRID, "--mc", "12")
    reference = tmp_path / "reference.db"
    assert main(["sweep", str(layout), "--data", "digits", "--store", str(reference), "-q",
                 *argv]) == 0
    store = tmp_path / "shared.db"  # created by whichever starts first
    processes = [subprocess.Popen(_sweep_cmd(layout, store, *argv), env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    for process in processes:
        _out, err = process.communicate(timeout=WAIT_S)
        assert process.returncode == 0, err[-2000:]
    assert rows(store) == rows(reference) and integrity(store) == "ok"


@pytest.mark.slow
def test_workers_give_the_same_rows(layout, tmp_path) -> None:
    argv = ("--sigma", "0.15", "--periphery", "ideal", "--periphery", "target", "--mc", "5")
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    for store, workers in ((one, "1"), (two, "2")):
        done = subprocess.run([*_sweep_cmd(layout, store, *argv), "--workers", workers],
                              env=_env(), capture_output=True, text=True, timeout=WAIT_S)
        assert done.returncode == 0, done.stderr[-2000:]
    assert len(rows(one)) == 10 and rows(two) == rows(one)


def test_report_numbers_are_summarize_of_the_store(layout, tmp_path, capsys) -> None:
    store = tmp_path / "s.db"
    assert main(["sweep", str(layout), "--data", "digits", "--store", str(store), "-q",
                 "--sigma", "0.1", "--sigma", "0.3", "--periphery", "ideal", "--mc", "6"]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["sweep", "--report", "--store", str(store), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((out / "sweep-report.json").read_text()) == report
    assert "verify" in report["note"]
    (series,) = report["series"]
    assert series["layout"] == str(layout) and series["test_samples"] > 0
    stored = rows(store)
    for result in series["results"]:
        accuracies = np.array([r[7] for r in stored if r[2] == result["sigma"]])
        stats = summarize(accuracies).as_dict()
        assert result["mc"] == stats and result["chips_complete"]
    assert [r["sigma"] for r in series["results"]] == [0.1, 0.3]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sweep", "--report", "--store", str(store), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MC mean" in text and "0..5" in text


def _refused(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
    return err


def test_bad_stores_are_refused(layout, tmp_path, capsys) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 100)
    sweep = ["sweep", str(layout), "--data", "digits", "--sigma", "0.1", "--mc", "1",
             "--periphery", "ideal", "-q", "--store"]
    assert "not a neftc sweep store" in _refused(capsys, *sweep, str(text))
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    content = foreign.read_bytes()
    assert "not a neftc sweep store" in _refused(capsys, *sweep, str(foreign))
    assert foreign.read_bytes() == content  # untouched
    assert "no sweep store" in _refused(capsys, "sweep", "--report", "--store",
                                        str(tmp_path / "missing.db"))
    store = tmp_path / "s.db"
    SweepStore(store).close()
    with sqlite3.connect(store) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(STORE_VERSION + 1),))
    assert "version" in _refused(capsys, *sweep, str(store))
    with pytest.raises(StoreError, match="version"):
        SweepStore(store, create=False)
    assert "does not exist" in _refused(capsys, "sweep", str(tmp_path / "nolayout"), "--data",
                                        "digits", "--sigma", "0.1", "--store", str(store))
    assert "--noise paper" in _refused(capsys, *sweep[:-1], "--noise", "paper", "--periphery",
                                       "target", "--store", str(tmp_path / "p.db"))
    assert "--mc" in _refused(capsys, *sweep, str(tmp_path / "p.db"), "--mc", "0")
    assert "drop LAYOUT" in _refused(capsys, "sweep", str(layout), "--report", "--store",
                                     str(store))
    assert not (tmp_path / "p.db").exists()  # nothing refused created a store


def test_other_dac_ranges_are_refused(layout, tmp_path, capsys) -> None:
    store = tmp_path / "s.db"
    argv = ["sweep", str(layout), "--data", "digits", "--store", str(store), "--sigma", "0.1",
            "--mc", "1", "-q"]
    assert main(argv) == 0
    assert "DAC ranges" in _refused(capsys, *argv, "--calib-samples", "64")
    assert len(rows(store)) == 1


@pytest.mark.parametrize("edit, needle", [
    ("UPDATE chips SET accuracy = 'abc' WHERE chip = 1", "'abc' is not a finite number"),
    ("UPDATE chips SET accuracy = 1.5 WHERE chip = 0", "'1.5' is not a finite number in 0 .. 1"),
    ("UPDATE chips SET chip = -7 WHERE chip = 2", "'-7' is not an integer"),
    ("UPDATE chips SET noise = 'os.system' WHERE chip = 0", "is not one of cell, paper, off"),
    ("UPDATE chips SET layout_sha256 = 'x' WHERE chip = 0", "is not a SHA-256"),
    ("UPDATE layouts SET path = zeroblob(10)", "text field holds bytes"),
    ("UPDATE noise_free SET accuracy = 9e999", "not a finite number"),
])
def test_an_edited_store_is_refused(layout, tmp_path, capsys, edit, needle) -> None:
    """A store is a file like any other: values of the wrong type or out of bounds (written by
    another program) end the report with one error line, not a traceback or a wrong number."""
    store = tmp_path / "edited.db"
    assert main(["sweep", str(layout), "--data", "digits", "--sigma", "0.1", "--mc", "3",
                 "--periphery", "ideal", "-q", "--store", str(store)]) == 0
    capsys.readouterr()
    with sqlite3.connect(store) as db:
        db.execute(edit)
    err = _refused(capsys, "sweep", "--report", "--store", str(store), "-o", str(tmp_path))
    assert "holds an invalid value" in err and needle in err, err
    assert not list(tmp_path.glob("sweep-report*"))  # nothing written
