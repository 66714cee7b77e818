"""The public Python API against a golden file: names exported and the signatures users call.

A difference is an API change. If it is intended (and the docs say so), regenerate the file with

    NEFTC_UPDATE_GOLDEN=1 python -m pytest tests/test_public_api.py

and review the diff of tests/golden/public_api.txt like code.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from golden_files import check_golden

GOLDEN = Path(__file__).resolve().parent / "golden" / "public_api.txt"

# The packages whose ``__all__`` is public, and the callables users call (module, name).
PACKAGES = ("neftc", "neftc.runtime", "neftc.targets")
CALLABLES = (
    ("neftc", "compile_model"),
    ("neftc", "compile_module"),
    ("neftc", "load_layout"),
    ("neftc.runtime", "Emulator"),
    ("neftc.runtime", "monte_carlo"),
    ("neftc.runtime", "summarize"),
    ("neftc.targets", "resolve_target"),
    ("neftc.targets", "target_tags"),
)


class _Opaque:
    """Stands for a default value that is an object: its type is API, its fields are the
    settings' own business (and its repr may change with every option added)."""

    def __init__(self, value: object) -> None:
        self.text = f"{type(value).__name__}(...)"

    def __repr__(self) -> str:
        return self.text


def _plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _signature(obj: Any) -> str:
    """The signature as written in the source (annotations are strings under
    ``from __future__ import annotations``, so no resolution and no addresses); object
    defaults are shown by their type."""
    signature = inspect.signature(obj)
    params = [p if p.default is inspect.Parameter.empty or _plain(p.default)
              else p.replace(default=_Opaque(p.default))
              for p in signature.parameters.values()]
    return str(signature.replace(parameters=params))


def api_text() -> str:
    lines = []
    for package in PACKAGES:
        names = importlib.import_module(package).__all__
        lines.append(f"{package}.__all__ = {sorted(names)}")
    lines.append("")
    for package, name in CALLABLES:
        obj = getattr(importlib.import_module(package), name)
        kind = "class" if inspect.isclass(obj) else "def"
        lines.append(f"{kind} {package}.{name}{_signature(obj)}")
    return "\n".join(lines) + "\n"


def test_every_exported_name_resolves() -> None:
    """``__all__`` is lazily served by ``__getattr__``: each name must really be importable."""
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"


def test_public_api_matches_the_golden_file() -> None:
    text = api_text()
    assert "0x" not in text, "a default value prints its address: the golden would not be stable"
    check_golden(GOLDEN, text, "the public API (update the docs too)",
                 "tests/test_public_api.py")
