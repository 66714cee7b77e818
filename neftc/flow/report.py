"""``report.html``: a self-contained page per layout (written by compile, updated by verify).

Sections: summary, per-layer table, array utilisation heatmap, placement picture, cost breakdown,
and accuracy-vs-sigma curves with 95 % confidence bands once ``neftc verify`` has run. Plots use
matplotlib when it is installed (``pip install neftc[report]``), embedded as PNG; without it the
report has the same tables and says how to get the plots.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from neftc.atomic import atomic_file, atomic_files, directory_lock
from neftc.errors import OutputError
from neftc.flow.summary import (
    dac_calibration_text,
    dac_text,
    format_summary,
    layout_summary,
    overrides_text,
)
from neftc.format.schema import CHECKSUMS_FILE, REPORT_FILE, LayoutDoc

REPORT_HTML = "report.html"
VERIFY_JSON = "verify.json"

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
img{max-width:100%}.note{color:#666}"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _plots(doc: LayoutDoc, summary: dict[str, Any],
           verify: dict[str, Any] | None) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return {}
    chip = doc.target.chip
    rows, cols = doc.target.array.rows, doc.target.array.cols
    utilisation = np.full((chip.cores, chip.arrays_per_core), np.nan)
    owner = np.full((chip.cores, chip.arrays_per_core), -1)
    for index, layer in enumerate(doc.layers):
        for tile in layer.tiles:
            for core, array in [(tile.core, tile.array), *tile.replicas]:
                utilisation[core, array] = tile.row_count * tile.col_count / (rows * cols)
                owner[core, array] = index
    used_cores = sorted({c for c in range(chip.cores) if (owner[c] >= 0).any()})
    shown = used_cores[-1] + 1 if used_cores else 1
    plots = {}
    fig, ax = plt.subplots(figsize=(10, max(2.0, shown * 0.12 + 1)))
    image = ax.imshow(utilisation[:shown], aspect="auto", cmap="viridis", vmin=0, vmax=1,
                      interpolation="nearest")
    ax.set_xlabel("array in core")
    ax.set_ylabel("core")
    ax.set_title("cell utilisation of each array (blank: free)")
    fig.colorbar(image, ax=ax)
    plots["heatmap"] = _png(fig)
    fig, ax = plt.subplots(figsize=(10, max(2.0, shown * 0.12 + 1)))
    masked = np.ma.masked_less(owner[:shown], 0)
    ax.imshow(masked, aspect="auto", cmap="tab20", interpolation="nearest")
    ax.set_xlabel("array in core")
    ax.set_ylabel("core")
    ax.set_title(f"placement ({doc.placement.strategy}): colour = layer")
    plots["placement"] = _png(fig)
    energy = {k.removesuffix("_pj"): v for k, v in summary["cost"]["energy_pj"].items()
              if k != "total_pj"}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(energy), [v / 1e6 for v in energy.values()], color="#4477aa")
    ax.set_xlabel("energy per inference (uJ)")
    plots["energy"] = _png(fig)
    if verify:
        fig, ax = plt.subplots(figsize=(6, 4))
        results = verify["results"]
        sigmas = [r["sigma"] for r in results]
        means = np.array([r["mc"]["mean"] for r in results]) * 100
        ci = np.array([r["mc"]["ci95"] for r in results]) * 100
        ax.plot(sigmas, means, marker="o", label="MC mean")
        ax.fill_between(sigmas, means - ci, means + ci, alpha=0.3, label="95 % CI of the mean")
        ax.plot(sigmas, [r["quantized_accuracy"] * 100 for r in results], "--",
                label="noise-free")
        ax.set_xlabel("device variation sigma (relative to cell range)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        ax.set_title(f"{verify['data']}, {results[0]['mc']['trials']} chip instances per sigma")
        plots["accuracy"] = _png(fig)
    return plots


def render_report(doc: LayoutDoc, verify: dict[str, Any] | None = None) -> str:
    summary = layout_summary(doc)
    plots = _plots(doc, summary, verify)
    totals = summary["totals"]
    cost = summary["cost"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>neftc report: "
             f"{html.escape(doc.target.name)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>neftc layout report</h1><p>model <code>{html.escape(doc.source.path)}</code> "
             f"on target <b>{html.escape(doc.target.name)}</b> "
             f"({doc.target.array.rows}x{doc.target.array.cols} arrays, "
             f"{doc.target.chip.cores} cores x {doc.target.chip.arrays_per_core} arrays); "
             f"target overrides: <code>{html.escape(overrides_text(summary['target_overrides']))}"
             "</code>.</p>"]
    if not plots:
        parts.append("<p class='note'>Plots need matplotlib: <code>pip install "
                     "matplotlib</code>, then re-run compile or verify.</p>")
    parts.append("<h2>Summary</h2>" + _table(["quantity", "value"], [
        ["layers", totals["layers"]], ["weights", f"{totals['weights']:,}"],
        ["arrays used", f"{totals['arrays_used']:,} of {totals['arrays_available']:,}"],
        ["arrays holding pipeline copies", f"{totals['replica_arrays']:,}"],
        ["cell utilisation of used arrays", f"{100 * totals['utilization']:.1f} %"],
        ["target overrides", overrides_text(summary["target_overrides"])],
        ["input DAC ranges", dac_calibration_text(summary["dac_calibration"])]]))
    parts.append("<h2>Layers</h2>" + _table(
        ["layer", "op", "matrix", "bits", "slices", "polarities", "tiles", "copies", "arrays",
         "DAC scale"],
        [[r["name"], r["op"], f"{r['matrix'][0]}x{r['matrix'][1]}", r["bits"], r["slices"],
          r["polarities"], r["tiles"], r["replication"], r["arrays"], dac_text(r["dac"])]
         for r in summary["layers"]]))
    parts.append("<h2>Arrays</h2>" + plots.get("heatmap", ""))
    p = summary["placement"]
    parts.append(f"<h2>Placement</h2><p>{html.escape(p['strategy'])} placement on a "
                 f"{html.escape(p['core_links'])} of cores: {p['byte_hops']:,.0f} byte-hops per "
                 f"inference; naive in-order placement: {p['in_order_byte_hops']:,.0f}.</p>"
                 + plots.get("placement", ""))
    parts.append("<h2>Cost per inference</h2>" + _table(
        ["item", "value"],
        [[k.replace("_", " "), f"{v:,.0f}"] for k, v in cost["per_inference"].items()]
        + [[f"energy: {k.removesuffix('_pj')}", f"{v / 1e6:.4g} uJ"]
           for k, v in cost["energy_pj"].items()]
        + [["latency, sequential", f"{cost['latency_ns']['sequential'] / 1e3:.4g} us"],
           ["latency, pipelined interval",
            f"{cost['latency_ns']['pipelined_interval'] / 1e3:.4g} us"],
           ["array area", f"{cost['area_um2']['used_arrays'] / 1e6:.4g} mm2"],
           ["programming (once): cells, copies included",
            f"{cost['programming']['cells']:,} ({cost['programming']['replica_cells']:,} in "
            "copies)"],
           ["programming (once): energy", f"{cost['programming']['energy_pj'] / 1e6:.4g} uJ"]])
        + plots.get("energy", "") + f"<p class='note'>{html.escape(cost['assumptions'])}; "
        "constants and their sources: <code>neftc targets "
        f"{html.escape(doc.target.name)}</code>.</p>")
    if verify:
        parts.append("<h2>Accuracy on simulated chips</h2>" + _table(
            ["sigma", "noise-free", "MC mean", "95 % CI", "std", "min", "p5", "max", "E[KL]",
             "trials"],
            [[r["sigma"], f"{100 * r['quantized_accuracy']:.2f}", f"{100 * r['mc']['mean']:.2f}",
              f"± {100 * r['mc']['ci95']:.2f}", f"{100 * r['mc']['std']:.2f}",
              f"{100 * r['mc']['min']:.1f}", f"{100 * r['mc']['p5']:.1f}",
              f"{100 * r['mc']['max']:.1f}", f"{r['uncertainty']['expected_kl']:.4f}",
              r["mc"]["trials"]] for r in verify["results"]]) + plots.get("accuracy", ""))
        periphery = verify.get("periphery")
        dac = "none (ideal periphery)" if periphery == "ideal" else (
            periphery.get("dac", "calibrated by verify") if isinstance(periphery, dict) else "?")
        parts.append(f"<p class='note'>input DAC ranges of this sign-off: "
                     f"{html.escape(str(dac))}.</p>")
    else:
        parts.append("<h2>Accuracy on simulated chips</h2><p class='note'>Run <code>neftc verify"
                     "</code> on this layout to add accuracy-vs-sigma curves.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def layout_identity(layout_dir: Path) -> bytes | None:
    """The layout's ``SHA256SUMS`` (it names ``layout.json`` and the sidecars by their hashes),
    or None when it cannot be read: what ``write_report(expect=...)`` compares."""
    try:
        return (Path(layout_dir) / CHECKSUMS_FILE).read_bytes()
    except OSError:
        return None


def write_report(layout_dir: Path, doc: LayoutDoc, verify: dict[str, Any] | None = None, *,
                 expect: bytes | None = None) -> Path:
    """(Re)write ``report.html`` in a layout directory, atomically; with ``verify``, also save
    it as ``verify.json`` (both are outside the layout's checksums).

    With ``verify`` the two files are one transaction: both are rendered first; then, holding the
    layout's lock (``neftc.atomic.directory_lock``, which a compile into the same directory takes
    for its swap), written to temporaries beside them and renamed into place, ``verify.json``
    first and ``report.html`` second; if the second rename fails the first is undone. So either
    both are the new sign-off or both are unchanged, and no temporary is left. ``verify.json`` is
    renamed first because ``report.html`` is derived from it (compile and calibrate re-render the
    report from it): only a process killed between the two renames can leave them apart, and then
    the report is stale, never ahead of the record. With ``expect`` (``layout_identity`` taken
    before verifying), nothing is written and ``OutputError`` raised when the directory now holds
    another layout (a compile replaced it meanwhile): the sign-off would describe the wrong one.
    """
    layout_dir = Path(layout_dir)
    path = layout_dir / REPORT_HTML
    if verify is None:
        if (layout_dir / VERIFY_JSON).is_file():
            try:
                verify = json.loads((layout_dir / VERIFY_JSON).read_text())
            except json.JSONDecodeError:
                verify = None
        _atomic_write(path, render_report(doc, verify))
        return path
    texts = (json.dumps(verify, indent=1) + "\n", render_report(doc, verify))
    with directory_lock(layout_dir, required=False):
        if expect is not None and layout_identity(layout_dir) != expect:
            raise OutputError(f"the layout in '{layout_dir}' was replaced while it was being "
                              f"verified; {VERIFY_JSON} and {REPORT_HTML} were not written. Run "
                              "neftc verify again on the new layout")
        with atomic_files(layout_dir / VERIFY_JSON, path) as temps:
            for tmp, text in zip(temps, texts):
                tmp.write_text(text, encoding="utf-8")
    return path


def write_layout_reports(directory: Path, doc: LayoutDoc) -> None:
    """The human-readable files of a layout being written: ``report.txt`` (the summary table)
    and ``report.html`` (from a ``verify.json`` already in ``directory``, if any)."""
    (Path(directory) / REPORT_FILE).write_text(format_summary(layout_summary(doc)))
    write_report(directory, doc)


def _atomic_write(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
