"""Issue 15 (the user's first hour), part A: one default periphery, what verify prints and
writes, data without surprises, the report, thread control."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from neftc.cli.main import main
from neftc.datasets.digits import load_digits
from neftc.datasets.spec import load_dataset
from neftc.frontend.zoo import build
from neftc.runtime import Emulator


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- item 2: one default


def test_emulator_default_periphery_is_the_targets_dac_adc(mlp_layout) -> None:
    """``Emulator(...)`` without ``ideal_periphery`` runs the DAC/ADC path, as verify does: it
    wants DAC ranges, and after calibration it gives the same outputs as an explicit
    ``ideal_periphery=False``, not the ideal ones."""
    x = load_digits().test.x[:64]
    default = Emulator(mlp_layout, sigma=0.0)
    assert not default.ideal_periphery
    with pytest.raises(Exception, match="DAC ranges are not set"):
        default(x)
    default.calibrate(x)
    explicit = Emulator(mlp_layout, sigma=0.0, ideal_periphery=False)
    explicit.calibrate(x)
    ideal = Emulator(mlp_layout, sigma=0.0, ideal_periphery=True)
    assert torch.equal(default(x), explicit(x))
    assert not torch.equal(default(x), ideal(x))  # the converters quantise: not the ideal path


def test_chips_per_pass_without_ideal_periphery_is_refused(capsys, mlp_layout) -> None:
    code, _, err = run(capsys, "verify", str(mlp_layout), "--mc", "2", "--chips-per-pass", "2",
                       "--no-report", "-q")
    assert code == 2 and "--chips-per-pass" in err and "--ideal-periphery" in err
    assert "Traceback" not in err


def test_noise_off_prints_no_sigma_and_one_chip_no_nan(capsys, mlp_layout) -> None:
    code, out, _ = run(capsys, "verify", str(mlp_layout), "--mc", "1", "--noise", "off",
                       "--no-report", "-q")
    assert code == 0
    table = out.split("-----")[-1].strip().splitlines()
    row = table[-1].split()
    assert row[0] == "-"  # no sigma: nothing varies
    assert row[3] == "-"  # one chip: no interval
    assert "nan" not in out.lower()
    code, _, err = run(capsys, "verify", str(mlp_layout), "--mc", "1", "--noise", "off",
                       "--sigma", "0.1", "--no-report", "-q")
    assert code == 2 and "--sigma" in err and "--noise off" in err


def test_one_chip_with_noise_prints_sigma_and_no_nan(capsys, mlp_layout) -> None:
    code, out, _ = run(capsys, "verify", str(mlp_layout), "--mc", "1", "--sigma", "0.1",
                       "--no-report", "-q")
    assert code == 0 and "nan" not in out.lower()
    row = out.strip().splitlines()[-1].split()
    assert row[0] == "0.100" and row[3] == "-"
    code, out, _ = run(capsys, "verify", str(mlp_layout), "--mc", "1", "--json", "--no-report")
    assert json.loads(out)["results"][0]["mc"]["ci95"] is None


# ---------------------------------------------------------------- item 5: data


@pytest.fixture(scope="module")
def xy_npz(tmp_path_factory) -> tuple[Path, Path]:
    """The digits' test samples as an x,y .npz: float in [0, 1], and as raw uint8 0..255."""
    test = load_digits().test
    folder = tmp_path_factory.mktemp("xy")
    floats, raw = folder / "xy.npz", folder / "raw.npz"
    np.savez(floats, x=test.x.numpy(), y=test.y.numpy())
    np.savez(raw, x=(test.x.numpy() * 255).round().astype(np.uint8), y=test.y.numpy())
    return floats, raw


def test_verify_takes_an_xy_npz_whole_unless_split(capsys, mlp_layout, xy_npz) -> None:
    floats, _ = xy_npz
    n = len(load_digits().test)
    base = ("verify", str(mlp_layout), "--data", str(floats), "--mc", "1", "--noise", "off",
            "--json", "--no-report")
    code, out, err = run(capsys, *base)
    whole = json.loads(out)
    assert code == 0 and whole["test_samples"] == n and "none" in whole["split"]
    assert "warning" not in err
    code, out, _ = run(capsys, *base, "--split")
    split = json.loads(out)
    expected = len(load_dataset(str(floats)).test)  # the shared permutation's test part
    assert code == 0 and split["test_samples"] == expected < n
    assert split["split"] == load_dataset(str(floats)).split


def test_raw_pixels_get_a_warning(capsys, mlp_layout, xy_npz) -> None:
    _, raw = xy_npz
    code, _, err = run(capsys, "verify", str(mlp_layout), "--data", str(raw), "--mc", "1",
                       "--noise", "off", "--no-report", "-q")
    assert code == 0 and "warning" in err and "0..255" in err and "x / 255" in err


def test_finetune_prints_accuracy_before_and_after(capsys, tmp_path, trained_lenet) -> None:
    from neftc.driver.neft_jobs import save_program
    from neftc.neft.train import accuracy

    model = tmp_path / "m.pt2"
    save_program(trained_lenet.model(), torch.zeros(1, 1, 8, 8), model)
    code, out, _ = run(capsys, "finetune", str(model), "--target", "fefet_128x128",
                       "--neft", "nit", "--data", "digits", "--epochs", "1", "-q",
                       "-o", str(tmp_path / "tuned.pt2"))
    assert code == 0, out
    found = re.search(r"test accuracy ([0-9.]+) % before, ([0-9.]+) % after", out)
    assert found is not None, out
    before = float(found.group(1))
    # the model's own accuracy on the digits' test split, measured independently
    assert before == pytest.approx(100 * accuracy(trained_lenet.model(), load_digits().test),
                                   abs=0.01)
    tuned = torch.export.load(tmp_path / "tuned.pt2").module()
    assert float(found.group(2)) == pytest.approx(
        100 * accuracy(tuned, load_digits().test), abs=0.01)


# ---------------------------------------------------------------- item 3: outputs


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_verify_output_goes_where_asked(capsys, tmp_path, mlp_layout) -> None:
    import shutil

    layout = tmp_path / "layout"
    shutil.copytree(mlp_layout, layout)
    before = _tree(layout)
    out = tmp_path / "runs" / "first.json"
    out.parent.mkdir()
    argv = ("verify", str(layout), "--mc", "2", "--sigma", "0.1", "-q")
    code, stdout, _ = run(capsys, *argv, "-o", str(out))
    assert code == 0 and str(out) in stdout
    assert json.loads(out.read_text())["results"][0]["mc"]["trials"] == 2
    assert "<html" in out.with_suffix(".html").read_text().lower()
    assert _tree(layout) == before  # the layout directory untouched
    code, _, err = run(capsys, *argv, "-o", str(out))  # never overwritten: refused up front
    assert code == 2 and "already exists" in err and out.read_bytes()
    code, _, err = run(capsys, *argv, "-o", str(tmp_path / "run.txt"))
    assert code == 2 and ".json" in err


def test_default_outputs_keep_every_run_and_leave_the_checksummed_files(capsys, tmp_path,
                                                                        mlp_layout) -> None:
    import shutil

    layout = tmp_path / "layout"
    shutil.copytree(mlp_layout, layout)
    sums = (layout / "SHA256SUMS").read_text()
    covered = {line.split()[-1].lstrip("*"): (layout / line.split()[-1].lstrip("*")).read_bytes()
               for line in sums.splitlines()}
    assert set(covered) == {"layout.json", "levels.bin", "tensors.bin"}  # README's claim
    for sigma in ("0.1", "0.2"):
        assert run(capsys, "verify", str(layout), "--mc", "2", "--sigma", sigma, "-q")[0] == 0
    runs = sorted((layout / "verify").glob("verify-*.json"))
    assert len(runs) == 2  # different settings: different names, both kept
    sigmas = sorted(json.loads(p.read_text())["results"][0]["sigma"] for p in runs)
    assert sigmas == [0.1, 0.2]
    assert json.loads((layout / "verify.json").read_text())["results"][0]["sigma"] == 0.2
    assert (layout / "SHA256SUMS").read_text() == sums
    assert all((layout / name).read_bytes() == data for name, data in covered.items())
    neftc_load = __import__("neftc").load_layout
    neftc_load(layout)  # still a valid, signed layout


def test_recompiling_into_a_signed_off_layout_says_its_runs_went(capsys, tmp_path) -> None:
    """``compile -o DIR`` over a layout with ``verify/`` records replaces the folder as a whole
    (the records signed off the old layout) and says so, naming how many; a first compile and a
    recompile without records print no such note."""
    from neftc.driver.neft_jobs import save_program

    model = tmp_path / "m.pt2"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_program(build("mlp", (1, 8, 8), 10).eval(), torch.zeros(1, 1, 8, 8), model)
    out = tmp_path / "out"
    argv = ("compile", str(model), "--target", "fefet_128x128", "-q", "-o", str(out))
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "verify run record" not in stdout
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "verify run record" not in stdout
    for sigma in ("0.1", "0.2"):
        assert run(capsys, "verify", str(out), "--mc", "1", "--sigma", sigma, "-q",
                   "--ideal-periphery")[0] == 0
    assert len(list((out / "verify").glob("*.json"))) == 2
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "its 2 verify run record(s)" in stdout and "-o PATH.json" in stdout
    assert not (out / "verify").exists() and (out / "layout.json").is_file()


def test_finetune_output_must_be_a_new_pt2(capsys, tmp_path) -> None:
    from neftc.driver.neft_jobs import save_program

    model = tmp_path / "m.pt2"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_program(build("mlp", (1, 8, 8), 10).eval(), torch.zeros(1, 1, 8, 8), model)
    base = ("finetune", str(model), "--neft", "nit", "--epochs", "1", "-q", "-o")
    existing = tmp_path / "old.pt2"
    existing.write_bytes(b"keep me")
    for output, words in ((existing, "already exists"), (tmp_path / "t.pt", ".pt2"),
                          (tmp_path, "directory"), (tmp_path / "no" / "t.pt2", "does not exist")):
        code, _, err = run(capsys, *base, str(output))
        assert code == 2 and words in err and "Traceback" not in err, (output, err)
    assert existing.read_bytes() == b"keep me"


# ---------------------------------------------------------------- item 1: threads


def test_default_threads_never_exceed_the_free_cores(monkeypatch) -> None:
    from neftc.cli import workers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _pid: set(range(8)))
    for load, alone, per_two in ((0.2, 8, 4), (3.4, 5, 2), (7.6, 1, 1), (40.0, 1, 1)):
        monkeypatch.setattr(workers.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert workers.default_threads(1) == alone, load
        assert workers.default_threads(2) == per_two, load
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins over the estimate
    assert workers.default_threads(1) == 3


def test_threads_flag_is_bounded_and_used(capsys, mlp_layout) -> None:
    before = torch.get_num_threads()
    try:
        for bad in ("0", "100000"):
            code, _, err = run(capsys, "verify", str(mlp_layout), "--mc", "1", "--threads", bad,
                               "--no-report", "-q")
            assert code == 2 and "--threads" in err and "Traceback" not in err
        code, _, _ = run(capsys, "verify", str(mlp_layout), "--mc", "1", "--threads", "2",
                         "--noise", "off", "--no-report", "-q")
        assert code == 0 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_workers_get_the_threads_asked_for(monkeypatch) -> None:
    """``--workers 2 --threads 3``: each process is started with OMP_NUM_THREADS=3 and keeps
    --threads 3 in its arguments."""
    from neftc.cli import workers

    started: list[tuple[list[str], dict[str, str]]] = []

    class Done:
        def __init__(self, argv, env, stdout=None) -> None:
            started.append((argv, env))

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(workers.subprocess, "Popen", Done)
    argv = ["verify", "L", "--workers", "2", "--threads", "3"]
    assert workers.launch(argv, 2, "verify", 3) == 0
    assert [env["OMP_NUM_THREADS"] for _, env in started] == ["3", "3"]
    assert all(a[-2:] == ["--threads", "3"] and "--workers" not in a for a, _ in started)


# ---------------------------------------------------------------- item 6: the report


def test_report_placement_legend_and_sign_off_settings(capsys, tmp_path, mlp_layout,
                                                       monkeypatch) -> None:
    import shutil

    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    legends: list[list[str]] = []
    real_legend = Axes.legend

    def spy(self, *args, **kwargs):  # observe the legends drawn, change nothing
        legend = real_legend(self, *args, **kwargs)
        legends.append([text.get_text() for text in legend.get_texts()])
        return legend

    monkeypatch.setattr(Axes, "legend", spy)
    layout = tmp_path / "layout"
    shutil.copytree(mlp_layout, layout)
    assert run(capsys, "verify", str(layout), "--mc", "2", "--sigma", "0.1", "--seed", "7",
               "-q")[0] == 0
    names = [layer.name for layer in __import__("neftc").load_layout(layout).doc.layers]
    assert [*names, "free"] in legends  # the placement picture names every layer
    page = (layout / "report.html").read_text()
    settings = page.split("Accuracy on simulated chips", 1)[1]
    for words in ("noise model cell-level device model", "periphery the target's DAC and ADC",
                  "seed 7", "2 chip instance(s) per sigma", "data digits", "449 test samples"):
        assert words.replace("'", "&#x27;") in settings, words
