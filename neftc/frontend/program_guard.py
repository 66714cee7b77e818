"""What an untrusted exported program may make torch evaluate or call: symbolic-shape
expressions (which torch parses with ``sympy.sympify``, i.e. evaluates as Python) only as calls of
sympy/torch shape functions on literals, and graph nodes only as ATen/prims ops without file
access, or plain size arithmetic."""

from __future__ import annotations

import io
import math
import operator
import re
import tokenize
from pathlib import Path
from typing import Any

import torch

from neftc.errors import UntrustedModelError
from neftc.frontend.model_file import REEXPORT, TRUST_FLAG

MAX_EXPR_CHARS = 10_000  # one symbolic-shape expression in a .pt2 program


# The names a symbolic-shape expression may use: sympy's srepr constructors and torch's shape
# functions (torch/_export/serde/serialize.py, sympy_functions), without powers, shifts or
# arbitrary-precision floats (which can run for hours on a small input).
_SYM_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Add", "Mul", "Max", "Min", "Mod", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "true", "false", "True", "False",
    "None", "oo", "nan", "Piecewise", "ExprCondPair", "FloorDiv", "ModularIndexing", "Where",
    "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "IntTrueDiv", "FloatTrueDiv",
    "Identity", "ToFloat", "TruncToFloat", "TruncToInt", "RoundToInt",
    "IsNonOverlappingAndDenseIndicator",
})
_SYM_STRING = re.compile(r"'[A-Za-z_][A-Za-z0-9_]{0,63}'")


def check_sym_exprs(path: Path, name: str, obj: Any) -> None:
    """torch parses every "expr_str" with sympy.sympify, which evaluates it as Python: allow only
    calls of sympy/torch shape functions on integer and symbol-name literals."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str" and not _plain_sym_expr(value):
                    shown = value if isinstance(value, str) and len(value) <= 80 else \
                        f"{str(value)[:77]}..."
                    raise UntrustedModelError(
                        f"'{path}': member '{name}' has a symbolic shape {shown!r} that is not a "
                        f"plain sympy expression (torch would evaluate it as Python code); "
                        f"{REEXPORT}")
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _plain_sym_expr(text: object) -> bool:
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        return False
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return False
    for i, token in enumerate(tokens):
        kind, string = token.type, token.string
        if kind in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        if kind == tokenize.NAME:
            follows = tokens[i + 1].string if i + 1 < len(tokens) else ""
            if string not in _SYM_NAMES and not (follows == "=" and string.isidentifier()
                                                 and not string.startswith("_")):
                return False
        elif kind == tokenize.NUMBER:
            if not string.isdigit() or len(string) > 40:
                return False
        elif kind == tokenize.STRING:
            if not _SYM_STRING.fullmatch(string):
                return False
        elif kind == tokenize.OP:
            if string not in ("(", ")", ",", "=", "-", "+"):
                return False
        else:
            return False
    return True


# Python-level functions an exported graph may call besides ATen/prims ops: symbolic-size
# arithmetic (torch/_export/serde/serialize.py, _SYM_OPS) and getitem. No power or shift.
_PURE_FUNCTIONS = frozenset({
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
    operator.truediv, operator.mod, operator.neg, operator.pos, operator.abs, operator.eq,
    operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
    operator.not_, math.ceil, math.floor, math.trunc, torch.sym_max, torch.sym_min, torch.sym_not,
    torch.sym_float, torch.sym_int, torch.sym_ite, torch.sym_sum,
})
_IO_OPS = frozenset({"from_file", "save", "_print", "warn"})  # aten ops that touch files or stdout


def check_graph_ops(path: Path, program: torch.export.ExportedProgram) -> None:
    """An untrusted program may call only ATen/prims ops and size arithmetic: no file access
    (aten.from_file maps any file into a tensor, which a later in-place op writes back), no
    custom-namespace or higher-order op, no subgraph."""
    for node in program.graph.nodes:
        if node.op in ("call_module", "call_method"):
            raise UntrustedModelError(f"'{path}': node '{node.name}' is a {node.op}, which an "
                                      f"exported program does not contain; {REEXPORT}")
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            op_name = target._schema.name.split("::", 1)[-1]
            if target.namespace in ("aten", "prims") and op_name not in _IO_OPS:
                continue
            why = ("reads or writes files" if op_name in _IO_OPS
                   else f"is not an ATen op (namespace '{target.namespace}')")
        elif target in _PURE_FUNCTIONS:
            continue
        else:
            why = "is not an ATen op"
        raise UntrustedModelError(f"'{path}': node '{node.name}' calls {target}, which {why}; "
                                  f"neftc runs only ATen ops without file access from an "
                                  f"untrusted model file. Pass {TRUST_FLAG} if you trust this file")
