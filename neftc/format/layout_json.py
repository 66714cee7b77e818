"""``layout.json`` parsed within bounds (docs/layout.md section 10): how deep arrays and objects
nest is counted by a linear scan before the parser recurses, integers have at most
:data:`MAX_INT_DIGITS` digits and floats are finite; then the format, version and schema."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from neftc.errors import LayoutError
from neftc.format.consistency import FIX, one_line
from neftc.format.schema import (
    LAYOUT_FILE,
    LAYOUT_FORMAT,
    LAYOUT_VERSION,
    READABLE_VERSIONS,
    LayoutDoc,
)
from neftc.format.upgrade import upgrade_v2, upgrade_v3

MAX_JSON_DEPTH = 64  # arrays/objects inside each other: a layout nests about 6 + 32 (arguments)
MAX_INT_DIGITS = 24  # digits of a JSON integer: layout integers fit in 64 bits (20 digits);
# a little more is parsed so that a field's own check names a merely too-large value

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


class _JsonLimit(ValueError):
    """layout.json breaks a limit checked before or while parsing."""


def _json_depth(raw: bytes, limit: int) -> int:
    """How deep arrays and objects nest in ``raw`` (strings skipped), counted up to just past
    ``limit``: a linear scan of the bytes, before the parser recurses into them."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET),
                             dtype=np.uint8)
    depth = deepest = 0
    step = 1 << 22
    for start in range(0, len(brackets), step):
        chunk = brackets[start:start + step]
        opens = (chunk == ord("[")) | (chunk == ord("{"))
        levels = depth + np.cumsum(np.where(opens, 1, -1), dtype=np.int64)
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        if deepest > limit:
            break
    return deepest


def _json_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _JsonLimit(f"holds the integer {text[:12]}... of {digits} digits; a layout's "
                         f"integers have at most {MAX_INT_DIGITS} digits")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonLimit(f"holds the number {text[:24]}, too large for a float")
    return value


def parse_layout(root: Path, raw: bytes) -> LayoutDoc:
    """``layout.json``'s bytes as a :class:`LayoutDoc`: nesting depth, integer digits and float
    range bounded before and while parsing, then format, version and schema checked."""
    if not raw.strip():
        raise LayoutError(f"'{root / LAYOUT_FILE}' is empty; the layout was not written to the "
                          f"end; {FIX}")
    depth = _json_depth(raw, MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise LayoutError(f"'{root / LAYOUT_FILE}' nests arrays and objects more than "
                          f"{MAX_JSON_DEPTH} deep; a layout nests at most {MAX_JSON_DEPTH} deep "
                          f"(docs/layout.md section 10); it is not a layout neftc wrote; {FIX}")
    try:
        data = json.loads(raw, parse_int=_json_int, parse_float=_json_float)
    except _JsonLimit as exc:
        raise LayoutError(f"'{root / LAYOUT_FILE}' {exc} (docs/layout.md section 10); it is not "
                          f"a layout neftc wrote; {FIX}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise LayoutError(f"'{root / LAYOUT_FILE}' is not valid JSON ({exc}); it may be "
                          f"truncated; {FIX}") from None
    if not isinstance(data, dict) or data.get("format") != LAYOUT_FORMAT:
        raise LayoutError(f"'{root / LAYOUT_FILE}' is not a neftc layout (no "
                          f"\"format\": \"{LAYOUT_FORMAT}\")")
    version = data.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise LayoutError(f"'{root / LAYOUT_FILE}' has layout version {version!r}; this neftc "
                          f"reads versions {readable} (writes {LAYOUT_VERSION}); {FIX}")
    if version == 2:
        data = upgrade_v2(data)
    if data.get("version") == 3:
        data = upgrade_v3(data)
    try:
        return LayoutDoc.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else p if str(p).startswith("[")
                        else f".{p}" for p in err["loc"])
        raise LayoutError(one_line(
            f"'{root / LAYOUT_FILE}' does not match the layout schema at {where.lstrip('.')}: "
            f"{err['msg']} ({exc.error_count()} problem(s)); {FIX}")) from None
