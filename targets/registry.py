"""Look targets up by tag or file, and apply validated ``key=value`` overrides.

A spec file is data from anyone: it is read with limits by :mod:`neftc.targets.spec_file` and
validated field by field against the bounds of :mod:`neftc.targets.spec`, so that no file or
``--set`` value can hang or exhaust a command (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from neftc.errors import TargetError, did_you_mean
from neftc.targets.presets import preset_dicts
from neftc.targets.spec import TargetSpec
from neftc.targets.spec_file import (
    SpecLimitError,
    clip,
    load_yaml,
    looks_like_path,
    read_spec_file,
    shown,
)


def target_tags() -> list[str]:
    """Tags of the built-in presets, sorted."""
    return sorted(preset_dicts())


def builtin_targets() -> dict[str, TargetSpec]:
    """Every built-in preset, validated."""
    return {tag: TargetSpec.model_validate(raw) for tag, raw in sorted(preset_dicts().items())}


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
                                f"(got {shown(err.get('input'))})")
            elif err["type"] == "value_error":  # a cross-field rule; the message has the values
                problems.append(f"'{where}': {err['msg'].removeprefix('Value error, ')}")
            else:
                problems.append(f"'{where}': {err['msg']} (got {shown(err.get('input'))})")
        raise TargetError(f"invalid target spec from {origin}: " + "; ".join(problems)) from None


def _parse_value(item: str, text: str) -> Any:
    """A ``--set`` value, parsed as a YAML scalar with the spec file's limits."""
    try:
        return load_yaml(text)
    except SpecLimitError as exc:
        raise TargetError(f"bad override '{clip(item)}': the value holds {exc}") from None
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
    elif looks_like_path(name):
        raw, origin = read_spec_file(Path(name)), f"'{name}'"
    else:
        raise TargetError(f"unknown target '{clip(name)}'.{did_you_mean(name, presets)} "
                          f"Known targets: {', '.join(sorted(presets))}; "
                          "or pass a YAML/JSON spec file.")
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin += " with " + " ".join(f"--set {clip(o)}" for o in overrides)
    return _validate(raw, origin)
