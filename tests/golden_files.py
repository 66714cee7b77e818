"""Golden files: compare a text with its stored golden, or (re)write the golden with
``NEFTC_UPDATE_GOLDEN=1``. Used by the pass-dump, public-API and help goldens."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

UPDATE = os.environ.get("NEFTC_UPDATE_GOLDEN") == "1"


def regenerate_command(test_file: str) -> str:
    return f"NEFTC_UPDATE_GOLDEN=1 python -m pytest -q -p no:cacheprovider {test_file}"


def check_golden(path: Path, text: str, what: str, test_file: str) -> None:
    """Fail with a unified diff when ``text`` differs from the golden at ``path`` (``what``
    names it in the message); with NEFTC_UPDATE_GOLDEN=1, write it instead."""
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    command = regenerate_command(test_file)
    assert path.is_file(), f"{path} is missing; generate it with:\n{command}"
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"golden/{path.name}", "now"))
        pytest.fail(f"{what} changed:\n{diff}\nIf the change is intended, review it and "
                    f"regenerate the golden with:\n{command}")
