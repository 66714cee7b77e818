"""Issue 15, items 4 and 7: messages that lead somewhere (untraceable models, ``--arch`` from the
current directory, did-you-mean, empty files, ``inspect`` on a file, the cores column, quiet
pipes, bars only on a terminal) and a start-up that does not import torch."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from neftc.cli.main import main
from neftc.errors import ModelFileError, TraceError, did_you_mean
from neftc.flow.summary import _cores
from neftc.frontend.trace import trace_module
from neftc.frontend.zoo import build
from neftc.progress import no_bar
from neftc.targets import target_tags

ROOT = Path(__file__).resolve().parent.parent

USER_MODEL = '''\
import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if x.sum() > 0:
            return y
        return -y
'''


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    assert err.count("error:") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


# ------------------------------------------------------------------ item 4: untraceable models


def test_data_dependent_branch_from_the_current_directory(capsys, tmp_path, monkeypatch) -> None:
    """``--arch user_branchy:Branchy`` is found in the current directory (the path is restored
    afterwards); its ``if x.sum() > 0`` is named with the file, line and the change to make
    (``torch.where``, which neftc compiles), not a pointer to torch.export (which fails on the
    same line)."""
    (tmp_path / "user_branchy.py").write_text(USER_MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "user_branchy", raising=False)
    path_before = list(sys.path)
    torch.save({"fc.weight": torch.eye(4), "fc.bias": torch.zeros(4)}, tmp_path / "w.pt")
    try:
        code, _, err = cli(capsys, "compile", "w.pt", "--arch", "user_branchy:Branchy",
                           "--input-shape", "4", "--target", "fefet_128x128", "-o", "out")
    finally:
        sys.modules.pop("user_branchy", None)
    assert sys.path == path_before
    line = USER_MODEL.splitlines().index("        if x.sum() > 0:") + 1
    one_error(code, err, "cannot be traced", f"user_branchy.py:{line}", "if x.sum() > 0:",
              "gt(sum_1, 0)", "torch.export fails on this line too", "torch.where(",
              "depend on shapes or constants")
    assert "torch.export.save" not in err  # not sent to export, which would fail the same way
    assert not (tmp_path / "out").exists()


class Selected(nn.Module):
    """``Branchy`` rewritten as the error says: both branches, one selected per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.where(x.sum(-1, keepdim=True) > 0, y, -y)


def test_the_suggested_rewrite_compiles(tmp_path) -> None:
    from neftc.driver.compiler import compile_module
    from neftc.runtime import Emulator
    from neftc.targets import resolve_target

    torch.manual_seed(0)
    model = Selected().eval()
    compile_module(model, torch.zeros(1, 4), resolve_target("fefet_128x128"), tmp_path / "out")
    x = torch.randn(16, 4)
    with torch.no_grad():
        want = model(x)
        got = Emulator(tmp_path / "out", ideal_periphery=True)(x)
    # both signs of the condition occur; the 8-bit weights keep the outputs within 5% of the
    # largest float output
    assert (x.sum(-1) > 0).any() and (x.sum(-1) <= 0).any()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


class ShapeBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > 2:  # control flow on a shape: torch.export handles it
            return x * 2
        return x


def test_shape_branch_points_to_export() -> None:
    with pytest.raises(TraceError) as info:
        trace_module(ShapeBranch(), torch.zeros(2, 4))
    message = str(info.value)
    assert "test_first_hour_b.py:" in message and "if x.shape[1] > 2:" in message
    assert "depends on the input's shape" in message and "torch.export.export" in message
    assert "torch.where" not in message


def test_missing_arch_module_names_cwd_and_pythonpath(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    code, _, err = cli(capsys, "compile", "w.pt", "--arch", "no_such_module_i15:Net",
                       "--input-shape", "4", "--target", "fefet_128x128", "-o", "out")
    one_error(code, err, "cannot import architecture", str(tmp_path), "PYTHONPATH")


def test_train_does_not_suggest_a_class_of_your_own() -> None:
    """``train`` builds a zoo model sized from the data: a ``module:Class`` is refused with what
    to do instead, an unknown name is not told to pass one."""
    with pytest.raises(ModelFileError) as info:
        build("mymodels:Net", (1, 8, 8), 10)
    assert "train it in PyTorch" in str(info.value)
    with pytest.raises(ModelFileError) as info:
        build("lenett", (1, 8, 8), 10)
    assert "module:Class" not in str(info.value) and "Did you mean 'lenet'?" in str(info.value)


# ------------------------------------------------------------------ item 4: small cuts


def test_did_you_mean_ignores_case_and_ranks_by_similarity() -> None:
    assert did_you_mean("FEFET_128X128", target_tags()) == " Did you mean 'fefet_128x128'?"
    assert did_you_mean("VGG8", ["vgg11", "vgg8"]) == " Did you mean 'vgg8'?"
    # the most similar, wherever it is listed (difflib ratio 0.91 against 0.86)
    assert did_you_mean("resnet", ["resnet18", "resne"]) == " Did you mean 'resne'?"
    assert did_you_mean("transformer", ["mlp", "lenet"]) == ""


def test_empty_files_are_called_empty(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("m.pt2", "s.yaml", "s.json"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "lay").mkdir()
    (tmp_path / "lay" / "layout.json").write_bytes(b"")
    code, _, err = cli(capsys, "compile", "m.pt2", "--target", "fefet_128x128", "-o", "out")
    one_error(code, err, "'m.pt2' is empty")
    for spec in ("s.yaml", "s.json"):
        code, _, err = cli(capsys, "targets", spec)
        one_error(code, err, f"'{spec}' is empty")
    code, _, err = cli(capsys, "inspect", "lay")
    one_error(code, err, "layout.json' is empty")


def test_inspect_on_a_file(capsys, tmp_path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"x")
    code, _, err = cli(capsys, "inspect", str(tmp_path / "model.pt2"))
    one_error(code, err, "not a layout directory")


def test_cores_column_lists_the_cores() -> None:
    assert _cores([]) == "-"
    assert _cores([4]) == "4"
    assert _cores([0, 2]) == "0,2"  # never "0-2": core 1 is not used
    assert _cores([0, 1, 5, 6, 7, 9]) == "0,1,5-7,9"


def test_progress_bars_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert no_bar(True, io.StringIO())  # a file or pipe: no bar
    assert not no_bar(True, Terminal())
    assert no_bar(False, Terminal())  # --quiet


@pytest.mark.parametrize("args", [["--help"], ["targets"], ["targets", "--json"],
                                  ["inspect", "LAYOUT"]])
def test_a_closed_pipe_ends_quietly(args, lenet_layout) -> None:
    """``neftc ... | head -1``: the reader goes away before neftc writes; no BrokenPipeError."""
    argv = [str(lenet_layout) if a == "LAYOUT" else a for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "neftc", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode in (0, 141)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


# ------------------------------------------------------------------ item 7: start-up


def imported_modules(*args: str) -> set[str]:
    """The modules ``python -X importtime -m neftc ARGS`` imports (its stderr's import lines)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "neftc", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("args", [["--help"], ["targets"], ["targets", "fefet_128x128"],
                                  ["targets", "--json"], ["compile", "--help"]])
def test_start_up_does_not_import_torch(args) -> None:
    modules = imported_modules(*args)
    assert "neftc.cli.main" in modules  # the import lines were read
    assert "torch" not in modules


def test_inspect_does_not_import_torch(lenet_layout) -> None:
    """``neftc inspect`` reads and checks the layout (all but the value bounds) without torch;
    ``--full`` adds the value bounds, which propagate shapes with torch."""
    modules = imported_modules("inspect", str(lenet_layout))
    assert {"neftc.format.reader", "neftc.flow.summary"} <= modules
    assert "torch" not in modules
    assert "torch" in imported_modules("inspect", "--full", str(lenet_layout))

