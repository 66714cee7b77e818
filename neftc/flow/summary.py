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
            "dac": layer.dac.model_dump() if layer.dac is not None else None,
        })
    s = doc.summary
    from neftc.flow.cost import estimate_cost

    return {
        "target": doc.target.name,
        "array": [doc.target.array.rows, doc.target.array.cols],
        "source": doc.source.path,
        "target_overrides": list(doc.options.target_overrides),
        "dac_calibration": (doc.dac_calibration.model_dump()
                            if doc.dac_calibration is not None else None),
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


def dac_text(dac: dict[str, Any] | None) -> str:
    """A layer's DAC setting in a table cell: ``0.00392 u8`` (unsigned, 8 bits), ``-`` if none."""
    if dac is None:
        return "-"
    return f"{dac['scale']:.4g} {'s' if dac['signed'] else 'u'}{dac['bits']}"


def overrides_text(overrides: list[str]) -> str:
    return " ".join(f"--set {o}" for o in overrides) if overrides else "none"


def dac_calibration_text(calibration: dict[str, Any] | None) -> str:
    if calibration is None:
        return ("not stored (neftc verify calibrates its own; store the ranges for programming "
                "with 'neftc calibrate LAYOUT --data DATA')")
    return (f"{calibration['method']} over {calibration['samples']:,} samples of "
            f"{calibration['data']}")


def format_summary(summary: dict[str, Any]) -> str:
    """The human table of ``layout_summary``."""
    headers = ["layer", "op", "matrix", "bits", "slices", "pol", "tiles", "copies", "arrays",
               "cores", "DAC scale"]
    rows = [[r["name"], r["op"], f"{r['matrix'][0]}x{r['matrix'][1]}", str(r["bits"]),
             str(r["slices"]), str(r["polarities"]), str(r["tiles"]), str(r["replication"]),
             str(r["arrays"]), _cores(r["cores"]), dac_text(r.get("dac"))]
            for r in summary["layers"]]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    right = {2, 3, 4, 5, 6, 7, 8}

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    t = summary["totals"]
    rows_out = [f"target {summary['target']} ({summary['array'][0]}x{summary['array'][1]} arrays)"
                f", model {summary['source']}",
                f"target overrides: {overrides_text(summary.get('target_overrides', []))}",
                f"input DAC ranges: {dac_calibration_text(summary.get('dac_calibration'))}",
                "", fmt(headers),
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
    per = c["per_inference"]
    rows_out += [
        f"placement {p['strategy']} on a {p['core_links']} of cores: {p['byte_hops']:,.0f} "
        f"byte-hops per inference ({100 * gain:.0f} % below in-order: "
        f"{p['in_order_byte_hops']:,.0f})",
        f"per inference: {per['array_reads']:,} array reads (each output position on one copy),"
        f" {per['adc_conversions']:,} ADC and {per['dac_conversions']:,} DAC conversions, "
        f"{per['digital_adds']:,} digital adds",
        f"bytes moved per inference: {per['bytes_moved']:,.0f} ({per['bytes_exchanged']:,} "
        f"between tiles + {per['replica_bytes']:,.0f} to and from pipeline copies); "
        f"{per['byte_hops']:,.0f} byte-hops ({per['replica_byte_hops']:,.0f} for the copies)",
        f"programming: {c['programming']['cells']:,} cells "
        f"({c['programming']['replica_cells']:,} in copies), "
        f"{c['programming']['energy_pj'] / 1e6:.3g} uJ once",
        f"energy {e['total_pj'] / 1e6:.3g} uJ (arrays {e['arrays_pj'] / 1e6:.3g}, ADC "
        f"{e['adc_pj'] / 1e6:.3g}, DAC {e['dac_pj'] / 1e6:.3g}, digital {e['digital_pj'] / 1e6:.3g},"
        f" interconnect {e['interconnect_pj'] / 1e6:.3g}); latency {lat['sequential'] / 1e3:.3g} us"
        f" unpipelined, one inference every {lat['pipelined_interval'] / 1e3:.3g} us pipelined; "
        f"area {c['area_um2']['used_arrays'] / 1e6:.3g} mm2 of arrays",
    ]
    return "\n".join(rows_out) + "\n"
