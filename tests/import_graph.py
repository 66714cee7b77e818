"""The import graph of the project's own modules, read from the source with ast (a lazy import
inside a function counts too). Used by the layer tests; imports nothing of neftc."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Installed package name -> source folder (pyproject's package-dir mapping).
PACKAGES = {"neftc.runtime": ROOT / "runtime", "neftc.targets": ROOT / "targets",
            "neftc.passes": ROOT / "passes", "neftc": ROOT / "neftc"}


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


def all_modules() -> list[str]:
    """Every module of the installed package ``neftc`` (source folders of PACKAGES)."""
    names: set[str] = set()
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            name = ".".join((package, *rel))
            if module_file(name) == path:  # a sub-folder mapped to its own package wins
                names.add(name)
    return sorted(names)
