"""report.html: written by compile, updated by verify, degrades without matplotlib, renders."""

from __future__ import annotations

import builtins
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neftc.cli.main import main
from neftc.driver.compiler import compile_module
from neftc.flow.report import render_report
from neftc.format.reader import load_layout

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lenet_layout(tmp_path, fefet) -> Path:
    from neftc.frontend.zoo import build

    torch.manual_seed(0)
    compile_module(build("lenet", (1, 8, 8), 10), torch.randn(1, 1, 8, 8), fefet,
                   tmp_path / "out")
    return tmp_path / "out"


def test_compile_writes_report_and_verify_updates_it(lenet_layout, capsys) -> None:
    page = (lenet_layout / "report.html").read_text()
    for section in ("Summary", "Layers", "Arrays", "Placement", "Cost per inference"):
        assert f"<h2>{section}</h2>" in page
    # The numbers the hardware flow reads: overrides, DAC ranges, copies' traffic, programming.
    assert "<td>target overrides</td><td>none</td>" in page
    assert "<td>input DAC ranges</td><td>not stored" in page and "DAC scale" in page
    for item in ("bytes moved", "replica bytes", "replica byte hops", "programming (once)"):
        assert item in page, item
    assert page.count("data:image/png;base64,") == 3  # heatmap, placement, energy
    assert "Run <code>neftc verify" in page
    assert main(["verify", str(lenet_layout), "--mc", "3", "--sigma", "0.05", "--sigma", "0.1",
                 "-q", "--ideal-periphery"]) == 0
    page = (lenet_layout / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # + accuracy vs sigma with CI band
    assert "<td>0.05</td>" in page and (lenet_layout / "verify.json").is_file()
    load_layout(lenet_layout)  # the report and verify.json do not break the checksums


def test_report_without_matplotlib(lenet_layout, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    page = render_report(load_layout(lenet_layout).doc)
    assert "data:image/png" not in page and "Plots need matplotlib" in page
    assert "<h2>Layers</h2>" in page and "features.0" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_report_renders_in_headless_chromium(lenet_layout, tmp_path) -> None:
    assert main(["verify", str(lenet_layout), "--mc", "2", "--sigma", "0.1", "-q",
                 "--ideal-periphery"]) == 0
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_report.py"),
                             str(lenet_layout), "--screenshot", str(tmp_path / "r.png")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_report_shows_overrides_and_the_stored_dac(tmp_path) -> None:
    from neftc.driver.compiler import CompileSettings
    from neftc.frontend.zoo import build
    from neftc.targets import resolve_target

    target = resolve_target("fefet_128x128", ["noise.sigma_rel=0.2"])
    torch.manual_seed(0)
    compile_module(build("lenet", (1, 8, 8), 10), torch.zeros(1, 1, 8, 8), target,
                   tmp_path / "out", settings=CompileSettings(
                       target_overrides=("noise.sigma_rel=0.2",), dac_data="digits",
                       dac_samples=32))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "target overrides: <code>--set noise.sigma_rel=0.2</code>" in page
    assert "<td>input DAC ranges</td><td>max-abs over 32 samples of digits</td>" in page
    dac = load_layout(tmp_path / "out").dac("features.0")
    assert dac is not None and f"<td>{dac.scale:.4g} u8</td>" in page
    text = (tmp_path / "out" / "report.txt").read_text()
    assert "input DAC ranges: max-abs over 32 samples of digits" in text
