"""The text form of a pass and of a pipeline, in the manner of xDSL's pass specs.

A pass is written as its name and, when it has options, its dataclass fields in braces with
kebab-case names: ``quantize{per-channel=true calibration=percentile percentile=99.9}``. A
pipeline is passes separated by commas: ``normalize,quantize{per-channel=true},bit-slice``.
Values: ``true``/``false``, numbers, words (quote with ``"..."`` when they hold spaces, commas or
braces), tuples as ``[a,b,c]``, and a field whose type is itself a pass as that pass's spec
(``inject-noise{sigma=0.1 quantize=quantize{per-channel=true}}``).

``spec_text(pass)`` writes every field (so a recorded pipeline does not depend on today's
defaults); ``parse_pipeline(text, registry)`` accepts any subset of fields and parses each value
by its dataclass field type. Only passes in the registry (``neftc.passes.PASSES``) are accepted.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from neftc.errors import NeftcError, did_you_mean


class PipelineSpecError(NeftcError):
    """Pipeline text names an unknown pass or field, or a value of the wrong type."""


_WORD = re.compile(r"[A-Za-z0-9_.:/+\-]+")
_CLOSE = {"{": "}", "[": "]"}


def spec_text(pass_: Any) -> str:
    """``name{field=value ...}`` with every dataclass field of ``pass_`` (just ``name`` when the
    pass has none, or is not a dataclass)."""
    name = str(pass_.name)
    if not dataclasses.is_dataclass(pass_):
        return name
    args = [f"{f.name.replace('_', '-')}={_value_text(getattr(pass_, f.name))}"
            for f in dataclasses.fields(pass_)]
    return f"{name}{{{' '.join(args)}}}" if args else name


def pipeline_text(passes: typing.Iterable[Any]) -> str:
    """Passes as pipeline text: their spec texts, separated by commas."""
    return ",".join(spec_text(p) for p in passes)


def _value_text(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and hasattr(value, "name"):
        return spec_text(value)
    text = str(value)
    if _WORD.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split(text: str, separators: str) -> list[str]:
    """Split at top-level separators (outside braces, brackets and quotes)."""
    parts, depth, quoted, start, i = [], [], False, 0, 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in _CLOSE:
            depth.append(_CLOSE[char])
        elif char in "}]":
            if not depth or depth.pop() != char:
                raise PipelineSpecError(f"unbalanced '{char}' at character {i + 1} of "
                                        f"'{text}'")
        elif not depth and char in separators:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted or depth:
        what = "quote" if quoted else f"bracket (missing '{depth[-1]}')"
        raise PipelineSpecError(f"unclosed {what} in '{text}': close it")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_pipeline(text: str, registry: Mapping[str, type]) -> list[Any]:
    """The passes of pipeline text ``text``, each built from ``registry`` (name -> class)."""
    passes = [parse_pass(item, registry) for item in _split(text, ",")]
    if not passes:
        raise PipelineSpecError(f"pipeline '{text}' names no pass; write e.g. "
                                f"'{','.join(list(registry)[:3])}'")
    return passes


def parse_pass(text: str, registry: Mapping[str, type]) -> Any:
    """One pass from its spec text ``name`` or ``name{field=value ...}``."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_\-]+)\s*(?:\{(.*)\})?\s*", text, re.DOTALL)
    if match is None:
        raise PipelineSpecError(f"cannot read pass '{text}': write name or "
                                "name{field=value ...}")
    name, body = match.group(1), match.group(2) or ""
    if name not in registry:
        raise PipelineSpecError(f"unknown pass '{name}'; the passes are "
                                f"{', '.join(sorted(registry))}.{did_you_mean(name, registry)}")
    cls = registry[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for arg in _split(body, " \t\n"):
        key, sep, raw = arg.partition("=")
        if not sep:
            raise PipelineSpecError(f"pass '{name}': option '{arg}' has no value; write "
                                    f"{key}=VALUE")
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise PipelineSpecError(f"pass '{name}' has no option '{key}' (its options: "
                                    f"{known}).{did_you_mean(key, fields)}")
        field = fields[key]
        values[field.name] = _parse_value(raw, hints[field.name], f"{name}{{{key}}}", registry)
    missing = [k for k, f in fields.items() if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise PipelineSpecError(f"pass '{name}' needs option(s) {', '.join(missing)}; write "
                                f"{name}{{{' '.join(k + '=...' for k in missing)}}}")
    return cls(**values)


def _parse_value(raw: str, kind: Any, where: str, registry: Mapping[str, type]) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _parse_value(raw, option, where, registry)
            except PipelineSpecError:
                continue
        raise PipelineSpecError(f"{where}: cannot read '{raw}' as {_type_words(kind)}")
    if origin is tuple:
        inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
        return tuple(_parse_value(item, args[0], where, registry) for item in _split(inner, ","))
    if origin is Literal:
        word = _unquote(raw)
        if word not in args:
            raise PipelineSpecError(f"{where}: '{word}' is not one of {', '.join(map(str, args))}."
                                    f"{did_you_mean(word, map(str, args))}")
        return word
    if kind is type(None):
        if raw != "none":
            raise PipelineSpecError(f"{where}: '{raw}' is not none")
        return None
    if kind is bool:
        if raw not in ("true", "false"):
            raise PipelineSpecError(f"{where}: '{raw}' is not a boolean; write true or false")
        return raw == "true"
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise PipelineSpecError(f"{where}: '{raw}' is not {_type_words(kind)}") from None
    if kind is str:
        return _unquote(raw)
    if isinstance(kind, type) and kind in registry.values():
        return parse_pass(raw, {k: v for k, v in registry.items() if v is kind})
    raise PipelineSpecError(f"{where}: options of type {kind!r} cannot be written as text")


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def _type_words(kind: Any) -> str:
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number",
             str: "a word"}
    return names.get(kind, str(kind))


__all__ = ["PipelineSpecError", "parse_pass", "parse_pipeline", "pipeline_text", "spec_text"]
