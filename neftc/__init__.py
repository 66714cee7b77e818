"""neftc: a deployment compiler for compute-in-memory crossbar accelerators.

Public API (imported lazily, so ``import neftc`` does no work):

- ``neftc.compile_model(path, target, ...)`` / ``neftc.compile_module(module, example, target)``
- ``neftc.load_layout(directory)`` -> ``Layout``
- ``neftc.NeftcError``: the base of every user-facing error
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Layout", "NeftcError", "compile_model", "compile_module", "load_layout"]


def __getattr__(name: str) -> Any:
    if name in ("compile_model", "compile_module"):
        from neftc.driver import compiler

        return getattr(compiler, name)
    if name in ("load_layout", "Layout"):
        from neftc.format import reader as layout

        return getattr(layout, name)
    if name == "NeftcError":
        from neftc.errors import NeftcError

        return NeftcError
    raise AttributeError(f"module 'neftc' has no attribute '{name}'")
