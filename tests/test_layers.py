"""The layers of ``neftc`` are visible in the tree and enforced: a module may import only modules of
its own layer or of a layer with a lower rank (ast imports, lazy ones included). The table is the
one in each subpackage's docstring and in docs/decisions.md ("Layers")."""

from __future__ import annotations

from import_graph import all_modules, module_file, neftc_imports

# (rank, layer, module prefixes). Longest prefix wins; equal ranks may not import each other.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "base", ("neftc.errors", "neftc.bounds", "neftc.devices", "neftc.atomic",
               "neftc.distributed", "neftc.progress")),
    (1, "encoding", ("neftc.format.encoding",)),
    (1, "datasets", ("neftc.datasets",)),
    (2, "targets", ("neftc.targets",)),
    (3, "format", ("neftc.format",)),
    (4, "ir", ("neftc.ir",)),
    (4, "frontend", ("neftc.frontend",)),
    (5, "neft-modules", ("neftc.neft.modules",)),
    (6, "passes", ("neftc.passes",)),
    (6, "runtime", ("neftc.runtime",)),
    (7, "neft", ("neftc.neft",)),
    (8, "flow", ("neftc.flow",)),
    (9, "driver", ("neftc.driver",)),
    (10, "cli", ("neftc.cli", "neftc.__main__", "neftc.data")),
    (10, "api", ("neftc",)),
]


def layer_of(module: str) -> tuple[int, str]:
    best: tuple[int, int, str] | None = None
    for rank, layer, prefixes in LAYERS:
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank, layer)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1], best[2]


def is_empty_package(module: str) -> bool:
    """A package whose ``__init__`` imports nothing of neftc (a docstring) is no dependency."""
    path = module_file(module)
    return path is not None and path.name == "__init__.py" and not neftc_imports(path, module)


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in edges.items():
        src_rank, src_layer = layer_of(src)
        for dst in targets:
            if dst == "neftc" or is_empty_package(dst):
                continue
            dst_rank, dst_layer = layer_of(dst)
            if dst_layer != src_layer and dst_rank >= src_rank:
                bad.append(f"{src} ({src_layer}) -> {dst} ({dst_layer})")
    return sorted(bad)


def project_edges() -> dict[str, set[str]]:
    edges = {}
    for name in all_modules():
        path = module_file(name)
        assert path is not None
        edges[name] = neftc_imports(path, name)
    return edges


def test_every_module_is_in_a_layer() -> None:
    modules = all_modules()
    assert len(modules) > 50  # the walk found the tree
    for name in modules:
        layer_of(name)


def test_no_module_imports_a_higher_layer() -> None:
    bad = upward_imports(project_edges())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_an_upward_import_is_caught(tmp_path) -> None:
    """The check can fail: a lazy import of the driver from a pass, and of a sibling layer of
    equal rank (runtime -> passes), are both reported; a downward import is not."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from neftc.driver.compiler import compile_model\n"
                     "    from neftc.ir.node_info import get_info\n")
    runtime_probe = tmp_path / "runtime_probe.py"
    runtime_probe.write_text("from neftc.passes.place import Place\n")
    edges = {"neftc.passes.probe": neftc_imports(probe, "neftc.passes.probe"),
             "neftc.runtime.probe": neftc_imports(runtime_probe, "neftc.runtime.probe")}
    assert upward_imports(edges) == [
        "neftc.passes.probe (passes) -> neftc.driver.compiler (driver)",
        "neftc.runtime.probe (runtime) -> neftc.passes.place (passes)"]


def test_every_subpackage_says_what_it_may_import() -> None:
    for name in all_modules():
        path = module_file(name)
        if path is not None and path.name == "__init__.py" and name.count(".") == 1:
            text = path.read_text()
            assert "import" in text.split('"""')[1], f"{name}'s docstring names no import rule"
