"""Outputs are all or nothing: verify's JSON and report together, race-free directory swaps,
byte-identical ``--neft`` compiles, and no temporaries after a failure."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neftc import atomic
from neftc.atomic import atomic_directory, atomic_files
from neftc.cli.main import main
from neftc.errors import OutputError
from neftc.flow.report import REPORT_HTML, VERIFY_JSON, write_report
from neftc.format.reader import load_layout
from neftc.frontend.zoo import build


def leftovers(directory: Path) -> list[str]:
    """Temporaries, backups and lock files that a writer left in ``directory``."""
    marks = (".tmp", ".old-", ".lock")
    return sorted(p.name for p in directory.iterdir()
                  if p.name.startswith(".") and any(m in p.name for m in marks))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def clean_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def subprocess_env() -> dict[str, str]:
    # One intra-op thread: the machine's cores are shared by the concurrent processes.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def layout(lenet_layout: Path) -> Path:
    return lenet_layout


def verify(layout: Path, sigma: float = 0.1) -> int:
    return main(["verify", str(layout), "--mc", "2", "--sigma", str(sigma), "--ideal-periphery",
                 "-q"])


def fail_renames_to(monkeypatch, name: str) -> None:
    """Make ``os.replace`` onto a file called ``name`` fail, as a full or read-only disk would."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.EIO, "simulated I/O error", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", replace)


# ------------------------------------------------------------ verify.json and report.html together


def test_verify_report_failure_keeps_the_previous_sign_off(layout, capsys, monkeypatch) -> None:
    assert verify(layout) == 0
    before = snapshot(layout)
    assert VERIFY_JSON in before and REPORT_HTML in before
    # The second rename (report.html) fails after verify.json was renamed into place: the
    # transaction restores the previous verify.json.
    fail_renames_to(monkeypatch, REPORT_HTML)
    code = verify(layout, 0.2)
    clean_error(capsys, code, REPORT_HTML, "no output was changed")
    assert snapshot(layout) == before
    assert json.loads(before[VERIFY_JSON])["results"][0]["sigma"] == 0.1
    assert leftovers(layout) == [] and leftovers(layout.parent) == []
    load_layout(layout)


def test_verify_report_failure_writes_neither_file(layout, capsys, monkeypatch) -> None:
    before = snapshot(layout)
    assert VERIFY_JSON not in before
    fail_renames_to(monkeypatch, REPORT_HTML)
    clean_error(capsys, verify(layout), REPORT_HTML)
    assert snapshot(layout) == before  # no verify.json appeared, report.html is the compile's
    assert leftovers(layout) == [] and leftovers(layout.parent) == []


def test_verify_render_failure_writes_nothing(layout, monkeypatch) -> None:
    assert verify(layout) == 0
    before = snapshot(layout)

    def broken(*_args, **_kwargs):
        raise OutputError("simulated rendering failure")

    monkeypatch.setattr("neftc.flow.report.render_report", broken)
    assert verify(layout, 0.3) == 2
    assert snapshot(layout) == before and leftovers(layout) == []


def test_verify_does_not_sign_off_a_replaced_layout(layout) -> None:
    """A compile replaced the directory while verify ran: nothing is written into the new one."""
    assert verify(layout) == 0
    report = json.loads((layout / VERIFY_JSON).read_text())
    report["results"][0]["sigma"] = 0.3
    before = snapshot(layout)
    with pytest.raises(OutputError, match="replaced while it was being verified"):
        write_report(layout, load_layout(layout).doc, report,
                     expect=b"the SHA256SUMS of the layout verify started on")
    assert snapshot(layout) == before and leftovers(layout) == []


def test_atomic_files_undoes_earlier_renames(tmp_path, monkeypatch) -> None:
    a, b, c = (tmp_path / n for n in ("a.json", "b.html", "c.txt"))
    a.write_text("old a")
    c.write_text("old c")
    fail_renames_to(monkeypatch, "c.txt")
    with pytest.raises(OutputError, match=r"c\.txt"), atomic_files(a, b, c) as temps:
        for tmp in temps:
            tmp.write_text("new")
    assert a.read_text() == "old a" and not b.exists() and c.read_text() == "old c"
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    with atomic_files(a, b, c) as temps:
        for tmp in temps:
            tmp.write_text("new")
    assert [p.read_text() for p in (a, b, c)] == ["new"] * 3 and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- directory swaps


def test_swap_failure_leaves_the_previous_output(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    with atomic_directory(out, marker="MARK") as tmp:
        (tmp / "MARK").write_text("first")

    def no_exchange(a, b):
        raise OSError(errno.EACCES, "simulated", str(b))

    monkeypatch.setattr(atomic, "_exchange", no_exchange)
    with (pytest.raises(OutputError, match="cannot replace output"),
          atomic_directory(out, marker="MARK") as tmp):
        (tmp / "MARK").write_text("second")
    assert (out / "MARK").read_text() == "first" and leftovers(tmp_path) == []


def test_fallback_swap_rolls_back(tmp_path, monkeypatch) -> None:
    """Without RENAME_EXCHANGE: previous output aside, new one in; if that fails, back again."""
    out = tmp_path / "out"
    with atomic_directory(out, marker="MARK") as tmp:
        (tmp / "MARK").write_text("first")
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in Path(src).name:
            raise OSError(errno.EIO, "simulated", str(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with (pytest.raises(OutputError, match="cannot replace output"),
          atomic_directory(out, marker="MARK") as tmp):
        (tmp / "MARK").write_text("second")
    assert (out / "MARK").read_text() == "first" and leftovers(tmp_path) == []
    monkeypatch.setattr(atomic.os, "rename", real)
    with atomic_directory(out, marker="MARK") as tmp:
        (tmp / "MARK").write_text("second")
    assert (out / "MARK").read_text() == "second" and leftovers(tmp_path) == []


def test_directory_made_by_someone_else_meanwhile_is_kept(tmp_path) -> None:
    """The destination is checked again under the lock, just before the swap."""
    out = tmp_path / "out"
    with (pytest.raises(OutputError, match="not a neftc output"),
          atomic_directory(out, marker="MARK") as tmp):
        (tmp / "MARK").write_text("ours")
        out.mkdir()
        (out / "thesis.tex").write_text("do not delete")
    assert os.listdir(out) == ["thesis.tex"] and leftovers(tmp_path) == []


WRITER = r"""
import sys
from pathlib import Path
import neftc.atomic as atomic
out, ident, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if sys.argv[4] == "fallback":
    atomic._renameat2 = lambda: None
for r in range(rounds):
    with atomic.atomic_directory(out, marker="MARK") as tmp:
        for i in range(8):
            (tmp / f"part{i}").write_text(f"{ident}-{r}")
        (tmp / "MARK").write_text(f"{ident}-{r}")
"""


@pytest.mark.parametrize("swap", ["exchange", "fallback"])
def test_concurrent_writers_end_with_one_whole_directory(tmp_path, swap) -> None:
    if swap == "exchange" and atomic._renameat2() is None:
        pytest.skip("no renameat2 on this system")
    out = tmp_path / "out"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(i), "40", swap],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=subprocess_env()) for i in range(4)]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0 and err == "", err
    contents = {p.read_text() for p in out.iterdir()}
    assert len(contents) == 1 and len(os.listdir(out)) == 9  # one writer's round, complete
    assert os.listdir(tmp_path) == ["out"]


def compile_concurrently(model: Path, out: Path, writers: int) -> None:
    """``writers`` real ``neftc compile`` processes into one ``-o``, with different options."""
    options = [[], ["--per-channel"], ["--placement", "in-order"], ["--no-replicate"]]
    procs = [subprocess.Popen([sys.executable, "-m", "neftc", "compile", str(model), "-q",
                               "-o", str(out), *options[i % len(options)]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env()) for i in range(writers)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err
    load_layout(out)  # one complete layout: every file matches its checksum
    assert sorted(os.listdir(out.parent)) == sorted([out.name, model.name])


def test_two_concurrent_compiles(tmp_path, exported_cnn) -> None:
    out = tmp_path / "out"
    compile_concurrently(exported_cnn, out, 2)


@pytest.mark.slow
def test_concurrent_compiles_repeatedly(tmp_path, exported_cnn) -> None:
    out = tmp_path / "out"
    for _ in range(4):
        compile_concurrently(exported_cnn, out, 4)


# ------------------------------------------------------------------- failures leave no trace


def test_failing_compile_leaves_the_previous_layout_and_no_temporaries(
        tmp_path, capsys, exported_cnn, monkeypatch) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(exported_cnn), "-q", "-o", str(out)]) == 0
    before = snapshot(out)
    # A late pass fails (placement: the chip is too small).
    code = main(["compile", str(exported_cnn), "-q", "--set", "chip.cores=1", "--set",
                 "chip.arrays_per_core=2", "-o", str(out)])
    clean_error(capsys, code, "arrays")
    assert snapshot(out) == before and leftovers(tmp_path) == []

    # Writing fails after the layout files, while the directory is being built.
    def full_disk(*_args, **_kwargs):
        raise OutputError("simulated: no space left on device")

    monkeypatch.setattr("neftc.format.writer.checksums", full_disk)
    clean_error(capsys, main(["compile", str(exported_cnn), "-q", "--per-channel", "-o", str(out)]),
                "no space left")
    assert snapshot(out) == before and leftovers(tmp_path) == []
    code = main(["compile", str(exported_cnn), "-q", "-o", str(tmp_path / "new")])
    clean_error(capsys, code, "no space left")
    assert sorted(os.listdir(tmp_path)) == ["model.pt2", "out"]


# ------------------------------------------------------------------------------- determinism


@pytest.fixture
def digits_model(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build("lenet", (1, 8, 8), 10).eval()
    path = tmp_path / "lenet.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), path)
    return path


@pytest.mark.parametrize("mode", ["nit", "irs"])
def test_neft_compile_twice_is_byte_identical(tmp_path, digits_model, mode) -> None:
    outputs = [tmp_path / "a", tmp_path / "b"]
    for out in outputs:
        assert main(["compile", str(digits_model), "--neft", mode, "--data", "digits",
                     "--epochs", "1", "-q", "-o", str(out)]) == 0
    first, second = (snapshot(out) for out in outputs)
    assert set(first) >= {"layout.json", "levels.bin", "tensors.bin", "SHA256SUMS"}
    assert first == second
    neft = json.loads(first["layout.json"])["options"]["neft"]
    assert neft["mode"] == mode and "seconds" not in neft  # wall-clock time is not in the layout
