"""The package installs as neftc, neftc.passes, neftc.targets, neftc.runtime, and nothing else."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_subpackages_map_to_their_folders() -> None:
    """pyproject's package-dir mapping: neftc.passes is passes/, and so on."""
    for name, folder in (("neftc", "neftc"), ("neftc.passes", "passes"),
                         ("neftc.targets", "targets"), ("neftc.runtime", "runtime")):
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == ROOT / folder, name


def test_every_subpackage_is_installed() -> None:
    """Every folder with an __init__.py is listed in pyproject's packages (an editable install
    would hide a missing one; a wheel would lack it)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"neftc": ROOT / "neftc", "neftc.passes": ROOT / "passes",
               "neftc.targets": ROOT / "targets", "neftc.runtime": ROOT / "runtime"}
    found = {"neftc.data"}  # package data only (digits.npz), no __init__.py
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            if package == "neftc" and rel and rel[0] in ("passes", "targets", "runtime"):
                continue
            found.add(".".join((package, *rel)))
    assert set(config["packages"]) == found


def test_no_top_level_names(tmp_path) -> None:
    # Run from an empty directory so the repository root is not on sys.path.
    code = ("import importlib.util, sys; "
            "sys.exit(any(importlib.util.find_spec(n) for n in ('passes', 'targets', 'runtime')))")
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0


def test_import_is_lazy(tmp_path) -> None:
    """Importing neftc does no work: torch is not even imported."""
    code = "import sys, neftc; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0


def test_module_entry_point(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "neftc", "--version"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("neftc ")
