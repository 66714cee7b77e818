"""Look targets up by tag or file, and apply validated ``key=value`` overrides."""

from __future__ import annotations

import json
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


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml", ".json")) or "/" in name or "\\" in name


def _read_spec_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TargetError(f"target spec file '{path}' does not exist; pass a built-in tag"
                          f" ({', '.join(target_tags())}) or the path of a YAML/JSON spec")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise TargetError(f"target spec file '{path}' is not valid "
                          f"{'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from None
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
            else:
                problems.append(f"'{where}': {err['msg']} (got {err.get('input')!r})")
        raise TargetError(f"invalid target spec from {origin}: " + "; ".join(problems)) from None


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
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
        node[parts[-1]] = _parse_value(value)
    return raw


def resolve_target(name: str, overrides: list[str] | None = None) -> TargetSpec:
    """A target by built-in tag or spec-file path, with validated overrides applied."""
    presets = preset_dicts()
    if name in presets:
        raw, origin = presets[name], f"built-in target '{name}'"
    elif _looks_like_path(name) or Path(name).is_file():
        raw, origin = _read_spec_file(Path(name)), f"'{name}'"
    else:
        raise TargetError(f"unknown target '{name}'.{did_you_mean(name, presets)} "
                          f"Known targets: {', '.join(sorted(presets))}; "
                          "or pass a YAML/JSON spec file.")
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin += " with " + " ".join(f"--set {o}" for o in overrides)
    return _validate(raw, origin)
