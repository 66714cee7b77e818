"""The runtime knows only the layout: ``neftc.runtime`` imports, directly or through what it
imports, nothing but the format package, the device model and target specs, errors, device
selection and the process group that splits chip instances over processes (DESIGN.md section 1).
The import graph is read from the source (ast), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast

from import_graph import ROOT, closure, neftc_imports

ALLOWED = ("neftc.runtime", "neftc.format", "neftc.targets", "neftc.errors", "neftc.devices",
           "neftc.distributed")


def runtime_modules() -> list[str]:
    return ["neftc.runtime" if p.name == "__init__.py" else f"neftc.runtime.{p.stem}"
            for p in sorted((ROOT / "runtime").glob("*.py"))]


def test_runtime_imports_only_the_layout_contract() -> None:
    edges = closure(runtime_modules())
    bad = sorted(f"{src} -> {dst}" for src, targets in edges.items() for dst in targets
                 if dst != "neftc" and not dst.startswith(ALLOWED))
    assert not bad, "runtime reaches the compiler: " + "; ".join(bad)
    assert "neftc.format.encoding" in edges  # the walk did follow the runtime's imports


def test_the_import_walk_catches_a_compiler_edge(tmp_path) -> None:
    """The check can fail: a function-level import of the compiler is an edge."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from neftc.passes.bit_slice import BitSlice\n"
                      "    from neftc.format import encoding\n")
    assert neftc_imports(source, "neftc.runtime.probe") == {
        "neftc.passes.bit_slice", "neftc.format", "neftc.format.encoding"}


def test_package_init_is_lazy() -> None:
    """``neftc/__init__.py`` (imported before any runtime module) imports nothing of neftc at
    module level."""
    tree = ast.parse((ROOT / "neftc" / "__init__.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(not (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("neftc"))
               for n in top)
