"""A ``.pt2`` program's serialised pytree specs, made plain data before torch reads them.

``torch.export.save`` records how the program's inputs and outputs nest (``in_spec`` and
``out_spec`` of each ``module_call_graph`` entry, JSON strings). A spec that names a type from a
package (a ``transformers`` ``ModelOutput``, a registered dataclass or namedtuple) loads only in a
process that imported that package, and some contexts make torch import modules (a defaultdict's
factory, an Enum key). neftc never imports anything for a model file: every container here
becomes a builtin tuple or dict with the same leaves in the same order (a ``ModelOutput``'s or
dataclass's context is its list of keys, like a dict's), so the graph, whose inputs and outputs
are the flat leaves, is unchanged. The leaves' names (``logits``, ``hidden_states[0]``) are kept
for choosing the model's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neftc.errors import ModelFileError
from neftc.frontend.model_file import RECOPY, REEXPORT

MAX_SPEC_DEPTH = 64  # nesting of one pytree spec

_LEAF: dict[str, Any] = {"type": None, "context": None, "children_spec": []}
_SEQUENCES = {"builtins.tuple", "builtins.list", "collections.deque", "torch.Size",
              "torch.fx.immutable_collections.immutable_list"}


def plain_program(path: Path, program: Any) -> tuple[Any, tuple[str, ...]]:
    """``program`` (the parsed ``models/model.json``) with every in/out spec made of builtin
    containers only, and the names of the top-level call's output leaves, in order."""
    try:
        graph_module = program["graph_module"]
        entries = graph_module["module_call_graph"]
        namedtuples = graph_module.get("treespec_namedtuple_fields") or {}
        outputs: tuple[str, ...] | None = None
        for entry in entries:
            signature = entry.get("signature")
            if signature is None:
                continue
            for key in ("in_spec", "out_spec"):
                protocol, root = json.loads(signature[key])
                if key == "out_spec" and entry.get("fqn") == "":
                    outputs = tuple(_leaf_names(root, namedtuples, "", 0))
                signature[key] = json.dumps([protocol, _plain(root, namedtuples, 0)])
        graph_module["treespec_namedtuple_fields"] = {}
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ModelFileError(f"'{path}' is a damaged torch.export archive: the program's "
                             f"input/output structure (a pytree spec in models/model.json) is "
                             f"malformed ({type(exc).__name__}: {exc}); {RECOPY}") from None
    if outputs is None:
        raise ModelFileError(f"'{path}': the program records no signature for its top-level "
                             f"call; {REEXPORT}")
    return program, outputs


def _children(node: Any, depth: int) -> list[Any]:
    if depth > MAX_SPEC_DEPTH:
        raise ValueError(f"a pytree spec nested deeper than {MAX_SPEC_DEPTH}")
    children = node["children_spec"]
    if not isinstance(children, list):
        raise TypeError("children_spec is not a list")
    return children


def _is_leaf(node: Any) -> bool:
    return node["type"] is None and node["context"] is None and not node["children_spec"]


def _plain(node: Any, namedtuples: dict[str, Any], depth: int) -> dict[str, Any]:
    """``node`` as builtin containers: a dict where its keys are known, else a tuple (the
    top-level ``(args, kwargs)`` of an in_spec keeps its kinds)."""
    if _is_leaf(node):
        return dict(_LEAF)
    children = [_plain(child, namedtuples, depth + 1) for child in _children(node, depth)]
    keys = _keys(node, namedtuples, len(children))
    if keys is None:
        kind = "builtins.list" if node["type"] == "builtins.list" else "builtins.tuple"
        return {"type": kind, "context": "null", "children_spec": children}
    return {"type": "builtins.dict", "context": json.dumps(keys), "children_spec": children}


def _keys(node: Any, namedtuples: dict[str, Any], count: int) -> list[str | int] | None:
    """The keys of a mapping-like node (dict, OrderedDict, defaultdict, namedtuple, ModelOutput,
    dataclass), when they are plain strings or integers, one per child; else None."""
    kind, context = node["type"], node["context"]
    if kind in _SEQUENCES:
        return None
    if kind == "collections.namedtuple":
        fields = namedtuples.get(context) if isinstance(context, str) else None
        keys: Any = fields.get("field_names") if isinstance(fields, dict) else None
    elif kind == "collections.defaultdict":
        keys = context.get("dict_context") if isinstance(context, dict) else None
    else:
        try:
            keys = json.loads(context) if isinstance(context, str) else None
        except ValueError:
            keys = None
        if isinstance(keys, list) and len(keys) == 2 and isinstance(keys[0], list) \
                and isinstance(keys[1], list) and len(keys[0]) == count:
            keys = keys[0]  # a dataclass: [field names, names of the fields that are None]
    if not isinstance(keys, list) or len(keys) != count or len(set(map(str, keys))) != count:
        return None
    if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys):
        return None
    return keys


def _leaf_names(node: Any, namedtuples: dict[str, Any], prefix: str, depth: int) -> list[str]:
    if _is_leaf(node):
        return [prefix or "output"]
    children = _children(node, depth)
    keys = _keys(node, namedtuples, len(children))
    names: list[str] = []
    for i, child in enumerate(children):
        if keys is not None and isinstance(keys[i], str) and keys[i].isidentifier():
            part = f"{prefix}.{keys[i]}" if prefix else keys[i]
        else:
            part = f"{prefix or 'output'}[{keys[i] if keys is not None else i!r}]"
        names.extend(_leaf_names(child, namedtuples, part, depth + 1))
    return names
