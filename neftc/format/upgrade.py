"""Older layout versions, converted to the current one as ``load_layout`` reads them.

Version 2 (before several and integer inputs) recorded one float32 input as
``graph.input_shape``; version 3 records ``graph.inputs``. The conversion is the one change
between them: ``graph.input_shape`` becomes one ``float32`` input named after the graph's first
placeholder node. Everything else, and the sidecars, are read as written; the checksums are of
the file as it is on disk.

Version 4 added the target's device effects (``target.effects``, ``neftc.targets.physics``), all
off when absent: a version 3 document is a version 4 document whose target has no effects, so its
conversion changes only the version. A converted document is a current one (``neftc calibrate``
writes it back as such).
"""

from __future__ import annotations

from typing import Any


def upgrade_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A version 2 ``layout.json`` document (parsed JSON) as version 3; a document whose graph
    is not of the version 2 form is returned with only the version changed, for the schema to
    name what is wrong."""
    graph = data.get("graph")
    if not isinstance(graph, dict) or "input_shape" not in graph or "inputs" in graph:
        return {**data, "version": 3}
    nodes = graph.get("nodes")
    names = [node.get("name") for node in nodes if isinstance(node, dict)
             and node.get("op") == "placeholder"] if isinstance(nodes, list) else []
    rest = {key: value for key, value in graph.items() if key != "input_shape"}
    record = {"name": names[0] if names and isinstance(names[0], str) else "x",
              "dtype": "float32", "shape": graph["input_shape"], "low": None, "high": None}
    return {**data, "version": 3, "graph": {"inputs": [record], **rest}}


def upgrade_v3(data: dict[str, Any]) -> dict[str, Any]:
    """A version 3 ``layout.json`` document as version 4: the same document (its target has no
    ``effects``, which version 4 reads as all off)."""
    return {**data, "version": 4}
