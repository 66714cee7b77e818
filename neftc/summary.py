"""Per-layer and total summaries of a layout, for ``neftc inspect`` and the report."""

from __future__ import annotations

from typing import Any

from neftc.format.schema import LayoutDoc


def layout_summary(doc: LayoutDoc) -> dict[str, Any]:
    """Plain data: one row per layer, and totals."""
    layers = []
    for layer in doc.layers:
        cells = sum(t.row_count * t.col_count * (1 + len(t.replicas)) for t in layer.tiles)
        arrays = {(c, a) for t in layer.tiles for c, a in [(t.core, t.array), *t.replicas]}
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
            "replication": layer.replication,
            "arrays": len(arrays),
            "cells": cells,
            "cores": sorted({c for c, _ in arrays}),
        })
    s = doc.summary
    from neftc.cost import estimate_cost

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
            "replica_arrays": s.replica_arrays,
        },
        "placement": doc.placement.model_dump(),
        "cost": estimate_cost(doc),
    }


def _cores(cores: list[int]) -> str:
    if not cores:
        return "-"
    return str(cores[0]) if len(cores) == 1 else f"{cores[0]}-{cores[-1]}"


def format_summary(summary: dict[str, Any]) -> str:
    """The human table of ``layout_summary``."""
    headers = ["layer", "op", "matrix", "bits", "slices", "pol", "tiles", "copies", "arrays",
               "cores"]
    rows = [[r["name"], r["op"], f"{r['matrix'][0]}x{r['matrix'][1]}", str(r["bits"]),
             str(r["slices"]), str(r["polarities"]), str(r["tiles"]), str(r["replication"]),
             str(r["arrays"]), _cores(r["cores"])] for r in summary["layers"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    right = {2, 3, 4, 5, 6, 7, 8}

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
        f"(utilisation {100 * t['utilization']:.1f} %); {t['replica_arrays']:,} arrays hold "
        "pipeline copies",
    ]
    p = summary["placement"]
    gain = (1 - p["byte_hops"] / p["in_order_byte_hops"]) if p["in_order_byte_hops"] else 0.0
    c = summary["cost"]
    e, lat = c["energy_pj"], c["latency_ns"]
    rows_out += [
        f"placement {p['strategy']} on a {p['core_links']} of cores: {p['byte_hops']:,.0f} "
        f"byte-hops per inference ({100 * gain:.0f} % below in-order: "
        f"{p['in_order_byte_hops']:,.0f})",
        f"per inference: {c['per_inference']['array_reads']:,} array reads, "
        f"{c['per_inference']['adc_conversions']:,} ADC and "
        f"{c['per_inference']['dac_conversions']:,} DAC conversions, "
        f"{c['per_inference']['digital_adds']:,} digital adds",
        f"energy {e['total_pj'] / 1e6:.3g} uJ (arrays {e['arrays_pj'] / 1e6:.3g}, ADC "
        f"{e['adc_pj'] / 1e6:.3g}, DAC {e['dac_pj'] / 1e6:.3g}, digital {e['digital_pj'] / 1e6:.3g},"
        f" interconnect {e['interconnect_pj'] / 1e6:.3g}); latency {lat['sequential'] / 1e3:.3g} us"
        f" unpipelined, one inference every {lat['pipelined_interval'] / 1e3:.3g} us pipelined; "
        f"area {c['area_um2']['used_arrays'] / 1e6:.3g} mm2 of arrays",
    ]
    return "\n".join(rows_out) + "\n"
