"""The ops a layout's digital graph may call, the arguments each accepts, and the size bounds of
every value the graph computes (docs/layout.md section 7.1.1).

A layout is data. Its graph may call only the ops of ``OPS`` (the ATen ops the compiler emits for
the models it supports, plus ``getitem``): none of them has a side effect, touches a file or
draws random numbers; the factories (``ones``, ``zeros``, ``full``, ``arange``, ``*_like``) and
the ops that take sizes (``view``, ``reshape``, ``expand``) are bounded like every value.
Every argument has a kind with bounds (``ARG_KINDS``). ``check_call`` checks one node's op and
arguments; ``check_values`` then propagates shapes through the whole graph on PyTorch's
``meta`` device (sizes only: nothing is allocated or computed) at the layout's batch and at
that batch plus ``BATCH_PROBE``, and bounds every value, all values together and the work of
one forward pass, each as a fixed part plus a part per sample of the batch. ``load_layout``
runs both before anything executes; the compiler runs both on the graph it is about to write.

This module is the one name callers use for that contract; it defines nothing. The argument
kinds and their bounds are in ``arg_kinds``, the op table and the per-node checks in
``op_table``, the value bounds and shape propagation in ``op_values``.
"""

from __future__ import annotations

from neftc.format.arg_kinds import ARG_KINDS
from neftc.format.op_table import OPS, OpError, OpSpec, Param, check_call, kind_table, op_table
from neftc.format.op_values import (
    BATCH_PROBE,
    MAX_ELEMENTS,
    MAX_MADE,
    MAX_WORK,
    GraphInput,
    check_values,
)

__all__ = [
    "ARG_KINDS",
    "BATCH_PROBE",
    "MAX_ELEMENTS",
    "MAX_MADE",
    "MAX_WORK",
    "OPS",
    "GraphInput",
    "OpError",
    "OpSpec",
    "Param",
    "check_call",
    "check_values",
    "kind_table",
    "op_table",
]
