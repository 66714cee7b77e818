"""Look targets up by tag or file, and apply validated ``key=value`` overrides.

A spec file is data from anyone: it is read only if it is a regular file of at most
:data:`MAX_SPEC_BYTES`, parsed with limits (no YAML aliases, nesting at most :data:`MAX_DEPTH`
deep, integers of at most :data:`MAX_INT_DIGITS` digits) and validated field by field against the
bounds of :mod:`neftc.targets.spec`, so that no file or ``--set`` value can hang or exhaust a
command (docs/security.md).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from neftc.errors import TargetError, did_you_mean
from neftc.targets.presets import preset_dicts
from neftc.targets.spec import TargetSpec


def target_tags() -> list[str]:
    """Tags of the built-in presets, sorted."""
    return sorted(preset_dicts())


def builtin_targets() -> dict[str, TargetSpec]:
    """Every built-in preset, validated."""
    return {tag: TargetSpec.model_validate(raw) for tag, raw in sorted(preset_dicts().items())}


#: Largest spec file read (a preset's spec is about 4 KiB).
MAX_SPEC_BYTES = 256 * 1024
#: Deepest nesting of mappings/lists in a spec file (a spec needs 2).
MAX_DEPTH = 16
#: Most digits (or characters) of an integer in a spec file or ``--set`` value.
MAX_INT_DIGITS = 40


class _SpecLimitError(yaml.YAMLError):
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
            raise _SpecLimitError(f"YAML alias '*{event.anchor}' on line {line}: YAML aliases are "
                                  "not allowed in a target spec; write the values out")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _SpecLimitError(f"nested more than {MAX_DEPTH} levels deep (a target spec "
                                  "needs 2)")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        if len(str(node.value)) > MAX_INT_DIGITS:
            raise _SpecLimitError(f"an integer of {len(str(node.value))} characters; at most "
                                  f"{MAX_INT_DIGITS} are allowed")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _load_yaml(text: str) -> Any:
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
        raise _SpecLimitError(f"an integer of {len(digits)} characters; at most "
                              f"{MAX_INT_DIGITS} are allowed")
    return int(digits)


def _load_json(text: str) -> Any:
    if _json_depth(text) > MAX_DEPTH:
        raise _SpecLimitError(f"nested more than {MAX_DEPTH} levels deep (a target spec needs 2)")
    return json.loads(text, parse_int=_json_int)


def _looks_like_path(name: str) -> bool:
    if name.endswith((".yaml", ".yml", ".json")) or "/" in name or "\\" in name:
        return True
    try:
        return Path(name).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _read_text(path: Path) -> str:
    """The text of a regular spec file of at most MAX_SPEC_BYTES (never a FIFO or device)."""
    hint = (f"pass a built-in tag ({', '.join(target_tags())}) or the path of a YAML/JSON "
            "spec")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TargetError(f"target spec file '{_clip(str(path))}' does not exist; {hint}") from None
    except ValueError:
        raise TargetError(f"target spec file name {_shown(str(path))} holds a NUL byte; "
                          f"{hint}") from None
    except OSError as exc:
        raise TargetError(f"target spec file '{_clip(str(path))}' cannot be read "
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


def _read_spec_file(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        raw = _load_json(text) if kind == "JSON" else _load_yaml(text)
    except _SpecLimitError as exc:
        raise TargetError(f"target spec file '{path}' is refused: {exc}") from None
    except (json.JSONDecodeError, yaml.YAMLError, ValueError, RecursionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TargetError(f"target spec file '{path}' is not valid {kind}: {first}") from None
    if not isinstance(raw, dict):
        raise TargetError(f"target spec file '{path}' must hold a mapping of fields, "
                          f"not {type(raw).__name__}")
    return raw


def _field_names(model: type[BaseModel], path: list[str]) -> list[str]:
    """The valid field names at a dotted path inside ``model``."""
    current: Any = model
    for part in path:
        field = current.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(
            field.annotation, BaseModel
        ):
            return []
        current = field.annotation
    return list(current.model_fields)


def _all_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths.extend(_all_paths(ann, f"{prefix}{name}."))
        else:
            paths.append(f"{prefix}{name}")
    return paths


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _allowed(loc: list[str]) -> str:
    """'a finite number >= 0 and <= 2' from the bounds of the field at ``loc``, or ''."""
    current: Any = TargetSpec
    field = None
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return ""
        current = field.annotation
    if field is None:
        return ""
    low = high = None
    for item in field.metadata:
        for name, sign in (("ge", ">="), ("gt", ">")):
            if getattr(item, name, None) is not None:
                low = f"{sign} {_number(getattr(item, name))}"
        for name, sign in (("le", "<="), ("lt", "<")):
            if getattr(item, name, None) is not None:
                high = f"{sign} {_number(getattr(item, name))}"
    if low is None and high is None:
        return ""
    kind = "a finite number" if field.annotation is float else "an integer"
    return f"{kind} {' and '.join(b for b in (low, high) if b)}"


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                 "finite_number"}


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _shown(value: Any) -> str:
    return _clip(repr(value))


def _validate(raw: dict[str, Any], origin: str) -> TargetSpec:
    try:
        return TargetSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            where = ".".join(loc)
            if err["type"] == "extra_forbidden":
                hint = did_you_mean(loc[-1], _field_names(TargetSpec, loc[:-1]))
                problems.append(f"unknown field '{where}'.{hint}")
            elif err["type"] == "missing":
                problems.append(f"missing field '{where}'")
            elif err["type"] in _BOUND_ERRORS and _allowed(loc):
                problems.append(f"'{where}': {err['msg']}; allowed: {_allowed(loc)} "
                                f"(got {_shown(err.get('input'))})")
            elif err["type"] == "value_error":  # a cross-field rule; the message has the values
                problems.append(f"'{where}': {err['msg'].removeprefix('Value error, ')}")
            else:
                problems.append(f"'{where}': {err['msg']} (got {_shown(err.get('input'))})")
        raise TargetError(f"invalid target spec from {origin}: " + "; ".join(problems)) from None


def _parse_value(item: str, text: str) -> Any:
    """A ``--set`` value, parsed as a YAML scalar with the spec file's limits."""
    try:
        return _load_yaml(text)
    except _SpecLimitError as exc:
        raise TargetError(f"bad override '{_clip(item)}': the value holds {exc}") from None
    except (yaml.YAMLError, ValueError, RecursionError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw spec dict (values parsed as YAML scalars)."""
    valid_paths = _all_paths(TargetSpec)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TargetError(f"bad override '{item}': write it as key=value, "
                              "e.g. --set noise.sigma_rel=0.15")
        if key not in valid_paths:
            hint = did_you_mean(key, valid_paths)
            raise TargetError(f"bad override '{item}': '{key}' is not a target field.{hint} "
                              "Run 'neftc targets --json' to see every field.")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TargetError(f"bad override '{item}': '{part}' in the spec is a "
                                  f"{type(node).__name__}, not a mapping of fields; fix the "
                                  "spec file")
        node[parts[-1]] = _parse_value(item, value)
    return raw


def resolve_target(name: str, overrides: list[str] | None = None) -> TargetSpec:
    """A target by built-in tag or spec-file path, with validated overrides applied."""
    presets = preset_dicts()
    if name in presets:
        raw, origin = presets[name], f"built-in target '{name}'"
    elif _looks_like_path(name):
        raw, origin = _read_spec_file(Path(name)), f"'{name}'"
    else:
        raise TargetError(f"unknown target '{_clip(name)}'.{did_you_mean(name, presets)} "
                          f"Known targets: {', '.join(sorted(presets))}; "
                          "or pass a YAML/JSON spec file.")
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin += " with " + " ".join(f"--set {_clip(o)}" for o in overrides)
    return _validate(raw, origin)
