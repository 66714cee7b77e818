"""Read a target spec file as data: a regular file of at most :data:`MAX_SPEC_BYTES`, parsed
with limits (no YAML aliases, nesting at most :data:`MAX_DEPTH` deep, integers of at most
:data:`MAX_INT_DIGITS` digits), so that no file can hang or exhaust a command (docs/security.md).
The fields are validated by :mod:`neftc.targets.registry`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from neftc.errors import TargetError
from neftc.targets.presets import preset_dicts

#: Largest spec file read (a preset's spec is about 4 KiB).
MAX_SPEC_BYTES = 256 * 1024
#: Deepest nesting of mappings/lists in a spec file (a spec needs 2).
MAX_DEPTH = 16
#: Most digits (or characters) of an integer in a spec file or ``--set`` value.
MAX_INT_DIGITS = 40


class SpecLimitError(yaml.YAMLError):
    """A spec (file or ``--set`` value) exceeds a parsing limit; the message says which."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases (so no alias bomb), with bounded nesting and integers."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.get_event()
            line = event.start_mark.line + 1 if event.start_mark else 0
            raise SpecLimitError(f"YAML alias '*{event.anchor}' on line {line}: YAML aliases are "
                                  "not allowed in a target spec; write the values out")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise SpecLimitError(f"nested more than {MAX_DEPTH} levels deep (a target spec "
                                  "needs 2)")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        if len(str(node.value)) > MAX_INT_DIGITS:
            raise SpecLimitError(f"an integer of {len(str(node.value))} characters; at most "
                                  f"{MAX_INT_DIGITS} are allowed")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON ``text`` (strings skipped): one linear scan."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _json_int(digits: str) -> int:
    if len(digits) > MAX_INT_DIGITS:
        raise SpecLimitError(f"an integer of {len(digits)} characters; at most "
                              f"{MAX_INT_DIGITS} are allowed")
    return int(digits)


def _load_json(text: str) -> Any:
    if _json_depth(text) > MAX_DEPTH:
        raise SpecLimitError(f"nested more than {MAX_DEPTH} levels deep (a target spec needs 2)")
    return json.loads(text, parse_int=_json_int)


def looks_like_path(name: str) -> bool:
    if name.endswith((".yaml", ".yml", ".json")) or "/" in name or "\\" in name:
        return True
    try:
        return Path(name).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _read_text(path: Path) -> str:
    """The text of a regular spec file of at most MAX_SPEC_BYTES (never a FIFO or device)."""
    hint = (f"pass a built-in tag ({', '.join(sorted(preset_dicts()))}) or the path of a YAML/JSON "
            "spec")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TargetError(f"target spec file '{clip(str(path))}' does not exist; {hint}") from None
    except ValueError:
        raise TargetError(f"target spec file name {shown(str(path))} holds a NUL byte; "
                          f"{hint}") from None
    except OSError as exc:
        raise TargetError(f"target spec file '{clip(str(path))}' cannot be read "
                          f"({exc.strerror or type(exc).__name__}); {hint}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise TargetError(f"target spec file '{path}' is {kind}; {hint}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise TargetError(f"target spec file '{path}' is not a regular file; {hint}")
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise TargetError(f"target spec file '{path}' cannot be read "
                          f"({exc.strerror or type(exc).__name__}); {hint}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise TargetError(f"target spec file '{path}' is larger than {MAX_SPEC_BYTES // 1024} "
                          "KiB; a target spec is a few KiB of YAML or JSON")
    return data.decode("utf-8", errors="replace")


def read_spec_file(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    kind = "JSON" if path.suffix == ".json" else "YAML"
    if not text.strip():
        raise TargetError(f"target spec file '{path}' is empty; start one from a preset "
                          "('neftc targets TAG --json > spec.json', then edit it) or pass a "
                          "built-in tag")
    try:
        raw = _load_json(text) if kind == "JSON" else load_yaml(text)
    except SpecLimitError as exc:
        raise TargetError(f"target spec file '{path}' is refused: {exc}") from None
    except (json.JSONDecodeError, yaml.YAMLError, ValueError, RecursionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TargetError(f"target spec file '{path}' is not valid {kind}: {first}") from None
    if not isinstance(raw, dict):
        raise TargetError(f"target spec file '{path}' must hold a mapping of fields, "
                          f"not {type(raw).__name__}")
    return raw


def clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def shown(value: Any) -> str:
    return clip(repr(value))
