"""The runtime knows only the layout: ``neftc.runtime`` imports, directly or through what it
imports, nothing but the format package, the device model and target specs, errors and device
selection (DESIGN.md section 1). The import graph is read from the source (ast), so a lazy import
inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Installed package name -> source folder (pyproject's package-dir mapping).
PACKAGES = {"neftc.runtime": ROOT / "runtime", "neftc.targets": ROOT / "targets",
            "neftc.passes": ROOT / "passes", "neftc": ROOT / "neftc"}
ALLOWED = ("neftc.runtime", "neftc.format", "neftc.targets", "neftc.errors", "neftc.devices")


def module_file(name: str) -> Path | None:
    for package, folder in PACKAGES.items():  # longest prefixes first
        if name == package or name.startswith(package + "."):
            rest = name[len(package):].lstrip(".").split(".") if name != package else []
            base = folder.joinpath(*rest)
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
            return None
    return None


def neftc_imports(path: Path, name: str) -> set[str]:
    """Every neftc module the file imports (absolute and relative, at any depth)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            for alias in node.names:  # `from neftc.format import encoding` imports a module
                if module_file(f"{base}.{alias.name}") is not None:
                    found.add(f"{base}.{alias.name}")
    return {n for n in found if n == "neftc" or n.startswith("neftc.")}


def closure(start: list[str]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in edges:
            continue
        path = module_file(name)
        edges[name] = neftc_imports(path, name) if path is not None else set()
        todo.extend(edges[name])
    return edges


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
