"""Per-layer and total summaries of a layout, for ``neftc inspect`` and the report."""

from __future__ import annotations

from typing import Any

from neftc.layout_schema import LayoutDoc


def layout_summary(doc: LayoutDoc) -> dict[str, Any]:
    """Plain data: one row per layer, and totals."""
    layers = []
    for layer in doc.layers:
        cells = sum(t.row_count * t.col_count for t in layer.tiles)
        layers.append({
            "name": layer.name,
            "op": layer.op,
            "weight_shape": layer.weight_shape,
            "matrix": [layer.matrix_rows, layer.matrix_cols],
            "bits": layer.quant.bits,
            "per_channel": layer.quant.per_channel,
            "slices": layer.slicing.slices,
            "polarities": layer.slicing.polarities,
            "tiles": len(layer.tiles),
            "arrays": len({(t.core, t.array) for t in layer.tiles}),
            "cells": cells,
            "cores": sorted({t.core for t in layer.tiles}),
        })
    s = doc.summary
    return {
        "target": doc.target.name,
        "array": [doc.target.array.rows, doc.target.array.cols],
        "source": doc.source.path,
        "layers": layers,
        "totals": {
            "layers": s.layers,
            "weights": s.weights,
            "arrays_used": s.arrays_used,
            "arrays_available": s.arrays_available,
            "cells_used": s.cells_used,
            "cells_in_used_arrays": s.cells_in_used_arrays,
            "utilization": s.utilization,
        },
    }


def _cores(cores: list[int]) -> str:
    if not cores:
        return "-"
    return str(cores[0]) if len(cores) == 1 else f"{cores[0]}-{cores[-1]}"


def format_summary(summary: dict[str, Any]) -> str:
    """The human table of ``layout_summary``."""
    headers = ["layer", "op", "matrix", "bits", "slices", "pol", "tiles", "arrays", "cores"]
    rows = [[r["name"], r["op"], f"{r['matrix'][0]}x{r['matrix'][1]}", str(r["bits"]),
             str(r["slices"]), str(r["polarities"]), str(r["tiles"]), str(r["arrays"]),
             _cores(r["cores"])] for r in summary["layers"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    right = {2, 3, 4, 5, 6, 7}

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    t = summary["totals"]
    rows_out = [f"target {summary['target']} ({summary['array'][0]}x{summary['array'][1]} arrays)"
                f", model {summary['source']}", "", fmt(headers),
                fmt(["-" * w for w in widths])]
    rows_out += [fmt(r) for r in rows]
    rows_out += [
        "",
        f"layers {t['layers']}, weights {t['weights']:,}",
        f"arrays used {t['arrays_used']:,} of {t['arrays_available']:,} on the chip "
        f"({100 * t['arrays_used'] / t['arrays_available']:.1f} %)",
        f"cells used {t['cells_used']:,} of {t['cells_in_used_arrays']:,} in the used arrays "
        f"(utilisation {100 * t['utilization']:.1f} %)",
    ]
    return "\n".join(rows_out) + "\n"
