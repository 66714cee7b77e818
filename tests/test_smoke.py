"""The package installs as neftc, neftc.passes, neftc.targets, neftc.runtime, and nothing else."""

import importlib
import subprocess
import sys


def test_subpackages_import() -> None:
    for name in ("neftc", "neftc.passes", "neftc.targets", "neftc.runtime"):
        module = importlib.import_module(name)
        assert module.__name__ == name


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
