"""The exact nodal solve of a resistive crossbar with wire resistance: the independent reference
of the IR-drop model (``neftc.runtime.ir_drop``), written from Kirchhoff's current law with numpy
only (it imports nothing of neftc).

The circuit (docs/emulator.md, "ir-drop"): ``R`` wordlines x ``C`` bitlines; cell ``(i, j)`` of
conductance ``G[i, j]`` (siemens) joins wordline node ``a[i, j]`` to bitline node ``b[i, j]``.
Wordline ``i`` is driven at its left end with ``V[i]`` through one segment, then runs through
one segment between each pair of adjacent columns; bitline ``j`` runs down through one segment
between each pair of adjacent rows and one more, after row ``R - 1``, into the sense amplifier
held at 0 V. Every segment has resistance ``r``. The bitline current is the current into the
sense amplifier, ``I[j] = b[R - 1, j] / r``. Unknowns: the ``2 R C`` node voltages.
"""

from __future__ import annotations

import numpy as np


def nodal_matrix(g: np.ndarray, r: float) -> np.ndarray:
    """The nodal conductance matrix ``Y`` [2RC, 2RC] of the crossbar (``Y v = s``): wordline
    node ``a[i, j]`` is unknown ``i*C + j``, bitline node ``b[i, j]`` unknown ``RC + i*C + j``."""
    rows, cols = g.shape
    n = rows * cols
    gw = 1.0 / r
    y = np.zeros((2 * n, 2 * n))

    def a(i: int, j: int) -> int:
        return i * cols + j

    def b(i: int, j: int) -> int:
        return n + i * cols + j

    def stamp(p: int, q: int, conductance: float) -> None:  # a conductance between two nodes
        y[p, p] += conductance
        y[q, q] += conductance
        y[p, q] -= conductance
        y[q, p] -= conductance

    for i in range(rows):
        y[a(i, 0), a(i, 0)] += gw  # the driver's segment (to a fixed voltage)
        for j in range(cols):
            stamp(a(i, j), b(i, j), float(g[i, j]))  # the cell
            if j + 1 < cols:
                stamp(a(i, j), a(i, j + 1), gw)  # wordline segment to the next column
            if i + 1 < rows:
                stamp(b(i, j), b(i + 1, j), gw)  # bitline segment to the next row
    for j in range(cols):
        y[b(rows - 1, j), b(rows - 1, j)] += gw  # the segment into the sense amplifier (0 V)
    return y


def bitline_currents(g: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """The sense-amplifier currents ``I`` [..., C] (amperes) of the crossbar of conductances
    ``g`` [R, C] (siemens) driven with wordline voltages ``v`` [..., R] (volts), segment
    resistance ``r`` > 0 (ohms). One dense solve for every input vector at once."""
    if r <= 0:
        raise ValueError("the nodal solve needs r > 0; with ideal wires I = v @ g")
    rows, cols = g.shape
    n = rows * cols
    v2 = np.atleast_2d(np.asarray(v, dtype=np.float64))  # [B, R]
    sources = np.zeros((2 * n, v2.shape[0]))
    sources[np.arange(rows) * cols, :] = v2.T / r  # the driver injects V/r at a[i, 0]
    nodes = np.linalg.solve(nodal_matrix(np.asarray(g, dtype=np.float64), r), sources)
    bottom = nodes[n + (rows - 1) * cols: n + rows * cols, :]  # b[R-1, :]
    out = (bottom / r).T
    return out.reshape(*np.shape(v)[:-1], cols)


def ideal_currents(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Ideal wires: ``I[j] = sum_i G[i, j] V[i]``."""
    return np.asarray(v, dtype=np.float64) @ np.asarray(g, dtype=np.float64)
