"""Per-layer and total summaries of a layout, for ``neftc inspect`` and the report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neftc.flow.cost import cost_estimate
from neftc.flow.records import (
    CostEstimate,
    DigitalOpCount,
    LayerSummary,
    LayoutSummary,
    TiedWeight,
)
from neftc.format.schema import (
    CROSSBAR_COPY_SUFFIX,
    DacCalibrationRecord,
    DacRecord,
    LayerRecord,
    LayoutDoc,
)

ACTIVATION_MATMUL = "matmul (activation x activation)"


def layer_summary(layer: LayerRecord) -> LayerSummary:
    cells = sum(t.row_count * t.col_count * (1 + len(t.replicas)) for t in layer.tiles)
    arrays = {(c, a) for t in layer.tiles for c, a in [(t.core, t.array), *t.replicas]}
    return LayerSummary(
        name=layer.name, op=layer.op, weight_shape=layer.weight_shape,
        matrix=[layer.matrix_rows, layer.matrix_cols], bits=layer.quant.bits,
        per_channel=layer.quant.per_channel, slices=layer.slicing.slices,
        polarities=layer.slicing.polarities, tiles=len(layer.tiles),
        replication=layer.replication, arrays=len(arrays), cells=cells,
        cores=sorted({c for c, _ in arrays}), dac=layer.dac)


def summarize(doc: LayoutDoc) -> LayoutSummary:
    """One row per layer, the totals, the placement and the cost estimate."""
    return LayoutSummary(
        target=doc.target.name,
        array=[doc.target.array.rows, doc.target.array.cols],
        source=doc.source.path,
        target_overrides=list(doc.options.target_overrides),
        dac_calibration=doc.dac_calibration,
        layers=[layer_summary(layer) for layer in doc.layers],
        totals=doc.summary,
        placement=doc.placement,
        cost=cost_estimate(doc),
        digital_ops=digital_ops(doc),
        tied_weights=tied_weights(doc))


def digital_ops(doc: LayoutDoc) -> list[DigitalOpCount]:
    """The graph's digital call nodes (those of no crossbar layer) counted per op kind, most
    frequent first. Every matmul left digital multiplies two activations: normalize maps each
    matmul with a static operand to a crossbar layer."""
    counts: dict[str, int] = {}
    for node in doc.graph.nodes:
        if node.op != "call_function" or node.layer is not None:
            continue
        kind = node.target.split(".")[1] if node.target.startswith("aten.") else node.target
        kind = ACTIVATION_MATMUL if kind == "matmul" else kind
        counts[kind] = counts.get(kind, 0) + 1
    return [DigitalOpCount(kind=k, count=n)
            for k, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def tied_weights(doc: LayoutDoc) -> list[TiedWeight]:
    """Weights read by more than one crossbar layer (one Linear called twice, tied matrices):
    each layer holds its own copy on its own tiles, so the weight is programmed once per layer;
    and crossbar weights that normalize copied from a tensor a digital op reads (tied input
    and output embeddings: ``<tensor>_crossbar``), so the values are stored twice."""
    by_name = {node.name: node for node in doc.graph.nodes}
    readers: dict[str, list[str]] = {}
    for layer in doc.layers:
        node = by_name.get(layer.node)
        weight = node.args[1] if node is not None and len(node.args) > 1 else None
        if isinstance(weight, dict) and "node" in weight:
            readers.setdefault(str(weight["node"]), []).append(layer.name)
    copies = {t.name.replace(".", "_") + CROSSBAR_COPY_SUFFIX: t.name for t in doc.tensors}
    tied = []
    for weight, names in readers.items():
        target = by_name[weight].target if weight in by_name else ""
        digital = [copies[target]] if target in copies else []
        if len(names) > 1 or digital:
            tied.append(TiedWeight(weight=weight, layers=names, digital=digital))
    return tied


def layout_summary(doc: LayoutDoc) -> dict[str, Any]:
    """``summarize`` as JSON data (what ``docs/summary.schema.json`` describes)."""
    return summarize(doc).model_dump(mode="json")


def _cores(cores: list[int]) -> str:
    """The cores a layer uses, listed: ``0,2,5``, a run of three or more consecutive cores
    written ``3-6`` (every core from 3 to 6 is used), ``-`` for none."""
    if not cores:
        return "-"
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) >= 3 else ",".join(map(str, r)) for r in runs)


def dac_text(dac: DacRecord | None) -> str:
    """A layer's DAC setting in a table cell: ``0.00392 u8`` (unsigned, 8 bits), ``-`` if none."""
    if dac is None:
        return "-"
    return f"{dac.scale:.4g} {'s' if dac.signed else 'u'}{dac.bits}"


def overrides_text(overrides: list[str]) -> str:
    return " ".join(f"--set {o}" for o in overrides) if overrides else "none"


def dac_calibration_text(calibration: DacCalibrationRecord | None) -> str:
    if calibration is None:
        return ("not stored (neftc verify calibrates its own; store the ranges for programming "
                "with 'neftc calibrate LAYOUT --data DATA')")
    return f"{calibration.method} over {calibration.samples:,} samples of {calibration.data}"


def parse_summary(summary: LayoutSummary | Mapping[str, Any]) -> LayoutSummary:
    """The summary record; JSON data (``layout_summary``) is parsed with the model."""
    return summary if isinstance(summary, LayoutSummary) else \
        LayoutSummary.model_validate(summary)


def _layer_table(summary: LayoutSummary) -> list[str]:
    headers = ["layer", "op", "matrix", "bits", "slices", "pol", "tiles", "copies", "arrays",
               "cores", "DAC scale"]
    rows = [[r.name, r.op, f"{r.matrix[0]}x{r.matrix[1]}", str(r.bits), str(r.slices),
             str(r.polarities), str(r.tiles), str(r.replication), str(r.arrays),
             _cores(r.cores), dac_text(r.dac)] for r in summary.layers]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    right = {2, 3, 4, 5, 6, 7, 8}

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _totals_lines(summary: LayoutSummary) -> list[str]:
    t, p = summary.totals, summary.placement
    gain = (1 - p.byte_hops / p.in_order_byte_hops) if p.in_order_byte_hops else 0.0
    return [
        f"layers {t.layers}, weights {t.weights:,}",
        f"arrays used {t.arrays_used:,} of {t.arrays_available:,} on the chip "
        f"({100 * t.arrays_used / t.arrays_available:.1f} %)",
        f"cells used {t.cells_used:,} of {t.cells_in_used_arrays:,} in the used arrays "
        f"(utilisation {100 * t.utilization:.1f} %); {t.replica_arrays:,} arrays hold "
        "pipeline copies",
        f"placement {p.strategy} on a {p.core_links} of cores: {p.byte_hops:,.0f} "
        f"byte-hops per inference ({100 * gain:.0f} % below in-order: "
        f"{p.in_order_byte_hops:,.0f})",
    ]


def _cost_lines(cost: CostEstimate) -> list[str]:
    per, e, lat, prog = cost.per_inference, cost.energy_pj, cost.latency_ns, cost.programming
    return [
        f"per inference: {per.array_reads:,} array reads (each output position on one copy),"
        f" {per.adc_conversions:,} ADC and {per.dac_conversions:,} DAC conversions, "
        f"{per.digital_adds:,} digital adds",
        f"bytes moved per inference: {per.bytes_moved:,.0f} ({per.bytes_exchanged:,} "
        f"between tiles + {per.replica_bytes:,.0f} to and from pipeline copies); "
        f"{per.byte_hops:,.0f} byte-hops ({per.replica_byte_hops:,.0f} for the copies)",
        f"programming: {prog.cells:,} cells ({prog.replica_cells:,} in copies), "
        f"{prog.energy_pj / 1e6:.3g} uJ once ({prog.pulses_per_cell:.3g} pulse(s) per cell"
        + ("" if prog.serial_time_s is None else
           f", {prog.serial_time_s:.3g} s one cell at a time") + ")",
        f"energy {e.total_pj / 1e6:.3g} uJ (arrays {e.arrays_pj / 1e6:.3g}, ADC "
        f"{e.adc_pj / 1e6:.3g}, DAC {e.dac_pj / 1e6:.3g}, digital {e.digital_pj / 1e6:.3g},"
        f" interconnect {e.interconnect_pj / 1e6:.3g}); latency {lat.sequential / 1e3:.3g} us"
        f" unpipelined, one inference every {lat.pipelined_interval / 1e3:.3g} us pipelined; "
        f"area {cost.area_um2.used_arrays / 1e6:.3g} mm2 of arrays",
    ]


def digital_text(counts: list[DigitalOpCount]) -> str:
    """``digital: 4 matmul (activation x activation), 2 embedding, ...`` (``-`` if none)."""
    return "digital: " + (", ".join(f"{c.count} {c.kind}" for c in counts) or "none")


def tied_lines(tied: list[TiedWeight]) -> list[str]:
    lines = []
    for t in tied:
        line = f"tied weight {t.weight}: read by layer(s) {', '.join(t.layers)}; programmed " \
               f"{len(t.layers)} time(s) (each layer on its own tiles)"
        if t.digital:
            line += f"; also stored as the digital tensor {', '.join(t.digital)}"
        lines.append(line)
    return lines


def format_summary(summary: LayoutSummary | Mapping[str, Any]) -> str:
    """The human table of a layout summary (``report.txt``, ``neftc inspect``)."""
    s = parse_summary(summary)
    lines = [f"target {s.target} ({s.array[0]}x{s.array[1]} arrays), model {s.source}",
             f"target overrides: {overrides_text(s.target_overrides)}",
             f"input DAC ranges: {dac_calibration_text(s.dac_calibration)}", ""]
    lines += [*_layer_table(s), "", *_totals_lines(s), *_cost_lines(s.cost),
              digital_text(s.digital_ops), *tied_lines(s.tied_weights)]
    return "\n".join(lines) + "\n"
