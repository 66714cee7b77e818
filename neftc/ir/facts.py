"""Pass facts: what is true of a graph after the passes so far (DESIGN.md section 2).

A pass declares the facts it ``requires`` (present before it runs), ``forbids`` (absent before it
runs), ``provides`` (true after it) and ``invalidates`` (no longer true after it). The pass
manager's order check (``neftc.ir.pass_manager.check_order``) walks a pipeline with these sets
before anything runs. A ``Fact`` is a ``str`` enum, so its value is the kebab-case word used in
messages and dumps.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Fact(StrEnum):
    TRACED = "traced"  # the frontend's graph: true of every graph a pass manager receives
    NORMALIZED = "normalized"  # canonical aten ops, crossbar nodes annotated (normalize)
    NOISY_WEIGHTS = "noisy-weights"  # training-only weight noise in the graph (inject-noise)
    FEEDBACK = "feedback"  # a NeFT feedback plan (and IRS heads) in the graph (insert-feedback)
    DEPLOYABLE = "deployable"  # no training-only module left (strip-training)
    QUANTIZED = "quantized"  # integer weights and scales recorded (quantize)
    SLICED = "sliced"  # cell levels recorded (bit-slice)
    TILED = "tiled"  # tiles recorded (map-tiles)
    PLACED = "placed"  # every tile on a (core, array) (place)


INITIAL_FACTS: frozenset[Fact] = frozenset({Fact.TRACED})


def fact_names(facts: Iterable[Fact | str]) -> str:
    """``facts`` as a sorted, comma-separated list of their words (for messages)."""
    return ", ".join(sorted(str(f) for f in facts))


def facts_of(pass_: object, kind: str) -> frozenset[Fact]:
    """One of a pass's fact sets: ``requires``, ``provides``, ``invalidates`` or ``forbids``.
    The last two are optional on a pass (absent: empty)."""
    return frozenset(Fact(f) for f in getattr(pass_, kind, frozenset()))


__all__ = ["INITIAL_FACTS", "Fact", "fact_names", "facts_of"]
