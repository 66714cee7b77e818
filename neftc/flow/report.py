"""``report.txt`` and ``report.html`` of a layout directory: written by compile and calibrate
after the layout is in place (``write_layout_reports``), ``report.html`` updated by verify with
``verify.json`` (``write_report``). ``report.html`` is a self-contained page.

Sections: summary, per-layer table, array utilisation heatmap, placement picture, cost breakdown,
and accuracy-vs-sigma curves with 95 % confidence bands once ``neftc verify`` has run. Plots use
matplotlib when it is installed (``pip install neftc[report]``), embedded as PNG; without it the
report has the same tables and says how to get the plots.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from neftc.atomic import atomic_file, atomic_files, directory_lock
from neftc.errors import OutputError
from neftc.flow.plots import report_plots
from neftc.flow.records import CostEstimate, LayoutSummary, VerifyRecord, effects_text
from neftc.flow.summary import (
    dac_calibration_text,
    dac_text,
    format_summary,
    overrides_text,
    summarize,
)
from neftc.format.schema import CHECKSUMS_FILE, LAYOUT_FILE, REPORT_FILE, LayoutDoc
from neftc.format.writer import document_bytes

REPORT_HTML = "report.html"
VERIFY_JSON = "verify.json"
#: The folder of a layout directory that keeps every sign-off, one file per run
#: (``verify-<UTC time>-<settings hash>.json``); outside the layout's checksums.
VERIFY_RUNS = "verify"

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
img{max-width:100%}.note{color:#666}"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _head(doc: LayoutDoc, summary: LayoutSummary, plots: dict[str, str]) -> list[str]:
    t = summary.totals
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>neftc report: "
             f"{html.escape(doc.target.name)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>neftc layout report</h1><p>model <code>{html.escape(doc.source.path)}</code> "
             f"on target <b>{html.escape(doc.target.name)}</b> "
             f"({doc.target.array.rows}x{doc.target.array.cols} arrays, "
             f"{doc.target.chip.cores} cores x {doc.target.chip.arrays_per_core} arrays); "
             f"target overrides: <code>{html.escape(overrides_text(summary.target_overrides))}"
             "</code>.</p>"]
    if not plots:
        parts.append("<p class='note'>Plots need matplotlib: <code>pip install "
                     "matplotlib</code>, then re-run compile or verify.</p>")
    parts.append("<h2>Summary</h2>" + _table(["quantity", "value"], [
        ["layers", t.layers], ["weights", f"{t.weights:,}"],
        ["arrays used", f"{t.arrays_used:,} of {t.arrays_available:,}"],
        ["arrays holding pipeline copies", f"{t.replica_arrays:,}"],
        ["cell utilisation of used arrays", f"{100 * t.utilization:.1f} %"],
        ["target overrides", overrides_text(summary.target_overrides)],
        ["input DAC ranges", dac_calibration_text(summary.dac_calibration)]]))
    parts.append("<h2>Layers</h2>" + _table(
        ["layer", "op", "matrix", "bits", "slices", "polarities", "tiles", "copies", "arrays",
         "DAC scale"],
        [[r.name, r.op, f"{r.matrix[0]}x{r.matrix[1]}", r.bits, r.slices, r.polarities, r.tiles,
          r.replication, r.arrays, dac_text(r.dac)] for r in summary.layers]))
    parts.append("<h2>Arrays</h2>" + plots.get("heatmap", ""))
    p = summary.placement
    parts.append(f"<h2>Placement</h2><p>{html.escape(p.strategy)} placement on a "
                 f"{html.escape(p.core_links)} of cores: {p.byte_hops:,.0f} byte-hops per "
                 f"inference; naive in-order placement: {p.in_order_byte_hops:,.0f}.</p>"
                 + plots.get("placement", ""))
    return parts


def _cost_section(doc: LayoutDoc, cost: CostEstimate, plots: dict[str, str]) -> str:
    rows: list[list[Any]] = [[k.replace("_", " "), f"{v:,.0f}"]
                             for k, v in cost.per_inference.model_dump().items()]
    rows += [[f"energy: {k.removesuffix('_pj')}", f"{v / 1e6:.4g} uJ"]
             for k, v in cost.energy_pj.model_dump().items()]
    prog = cost.programming
    rows += [["latency, sequential", f"{cost.latency_ns.sequential / 1e3:.4g} us"],
             ["latency, pipelined interval", f"{cost.latency_ns.pipelined_interval / 1e3:.4g} us"],
             ["array area", f"{cost.area_um2.used_arrays / 1e6:.4g} mm2"],
             ["programming (once): cells, copies included",
              f"{prog.cells:,} ({prog.replica_cells:,} in copies)"],
             ["programming (once): energy", f"{prog.energy_pj / 1e6:.4g} uJ"]]
    return ("<h2>Cost per inference</h2>" + _table(["item", "value"], rows)
            + plots.get("energy", "") + f"<p class='note'>{html.escape(cost.assumptions)}; "
            "constants and their sources: <code>neftc targets "
            f"{html.escape(doc.target.name)}</code>.</p>")


def _percent(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _accuracy_section(verify: VerifyRecord | None, plots: dict[str, str]) -> list[str]:
    if verify is None:
        return ["<h2>Accuracy on simulated chips</h2><p class='note'>Run <code>neftc verify"
                "</code> on this layout to add accuracy-vs-sigma curves.</p>"]
    rows = [["-" if verify.noise == "off" else r.sigma, _percent(r.quantized_accuracy, 2),
             _percent(r.mc.mean, 2), "-" if r.mc.ci95 is None else f"± {_percent(r.mc.ci95, 2)}",
             _percent(r.mc.std, 2), _percent(r.mc.min, 1),
             _percent(r.mc.p5, 1), _percent(r.mc.max, 1), f"{r.uncertainty.expected_kl:.4f}",
             r.mc.trials] for r in verify.results]
    table = _table(["sigma", "noise-free", "MC mean", "95 % CI", "std", "min", "p5", "max",
                    "E[KL]", "trials"], rows)
    periphery = verify.periphery
    dac = "none (ideal periphery)" if periphery == "ideal" else periphery.dac
    return ["<h2>Accuracy on simulated chips</h2>",
            f"<p class='note'>{html.escape(sign_off_settings(verify))}</p>",
            table + plots.get("accuracy", ""),
            f"<p class='note'>input DAC ranges of this sign-off: {html.escape(dac)}.</p>"]


def sign_off_settings(verify: VerifyRecord) -> str:
    """One sentence of what a sign-off ran: noise model, periphery, seed, chips and data."""
    noise = {"cell": "cell-level device model (state-dependent variation, s = "
                     f"{verify.state_ratio:g})",
             "paper": "the NeFT paper's weight-level formula",
             "off": "off (no device variation)"}.get(verify.noise, verify.noise)
    periphery = verify.periphery
    if periphery == "ideal":
        converters = "ideal (no DAC/ADC quantisation)"
    else:
        converters = (f"the target's DAC and ADC ({periphery.input_bits}-bit inputs, "
                      f"{periphery.dac_bits_per_cycle} bit(s) per cycle, {periphery.adc_bits}-bit "
                      f"ADC)")
    chips = sorted({r.mc.trials for r in verify.results})
    return (f"Settings: noise model {noise}; stuck-at faults "
            f"{'on' if verify.faults else 'off'}; periphery {converters}; seed {verify.seed} "
            f"(chip instance i of a seed is always the same chip); "
            f"{'/'.join(map(str, chips))} chip instance(s) per sigma; data {verify.data}, "
            f"{verify.test_samples} test samples (split: {verify.split}); device "
            f"{verify.device}; {effects_text(verify.effects, verify.target)}.")


def render_report(doc: LayoutDoc, verify: VerifyRecord | None = None) -> str:
    """The whole ``report.html`` page of ``doc`` (with the sign-off ``verify``, if any)."""
    summary = summarize(doc)
    plots = report_plots(doc, summary, verify)
    parts = [*_head(doc, summary, plots), _cost_section(doc, summary.cost, plots),
             *_accuracy_section(verify, plots), "</body></html>"]
    return "\n".join(parts)


def layout_identity(layout_dir: Path) -> bytes | None:
    """The layout's ``SHA256SUMS`` (it names ``layout.json`` and the sidecars by their hashes),
    or None when it cannot be read: what ``write_report(expect=...)`` compares."""
    try:
        return (Path(layout_dir) / CHECKSUMS_FILE).read_bytes()
    except OSError:
        return None


def parse_verify(verify: VerifyRecord | Mapping[str, Any]) -> VerifyRecord:
    """The sign-off record; JSON data (``run_verify``) is parsed with the model."""
    return verify if isinstance(verify, VerifyRecord) else VerifyRecord.model_validate(verify)


def read_verify(layout_dir: Path) -> tuple[str, VerifyRecord | None] | None:
    """``verify.json`` of a layout directory: (its text, the record or None when it does not
    parse as a ``VerifyRecord``), or None when there is no such file."""
    path = Path(layout_dir) / VERIFY_JSON
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "", None
    try:
        return text, VerifyRecord.model_validate_json(text)
    except ValidationError:
        return text, None


def carried_verify(layout_dir: Path, dac: Mapping[str, Mapping[str, object]]
                   ) -> tuple[str | None, bool]:
    """What a re-written layout with the DAC settings ``dac`` (layer -> ``DacRecord`` fields)
    keeps of ``layout_dir``'s ``verify.json``: (its text when it was signed off with exactly these
    settings or with ideal periphery, else None; True when a file was there and is left out, also
    when it does not parse as a ``VerifyRecord``)."""
    stored = read_verify(layout_dir)
    if stored is None:
        return None, False
    text, record = stored
    if record is None:
        return None, True
    periphery = record.periphery
    used = {} if periphery == "ideal" else {
        name: d.model_dump() for name, d in periphery.dac_layers.items()}
    if periphery == "ideal" or used == dict(dac):
        return text, False  # ideal: the DAC was not used, any calibration leaves it valid
    return None, True


def write_report(layout_dir: Path, doc: LayoutDoc,
                 verify: VerifyRecord | Mapping[str, Any] | None = None, *,
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
        with directory_lock(layout_dir, required=False):
            stored = read_verify(layout_dir)
            _atomic_write(path, render_report(doc, stored[1] if stored else None))
        return path
    record = parse_verify(verify)
    texts = (record.model_dump_json(indent=1) + "\n", render_report(doc, record))
    with directory_lock(layout_dir, required=False):
        if expect is not None and layout_identity(layout_dir) != expect:
            raise OutputError(f"the layout in '{layout_dir}' was replaced while it was being "
                              f"verified; {VERIFY_JSON} and {REPORT_HTML} were not written. Run "
                              "neftc verify again on the new layout")
        with atomic_files(layout_dir / VERIFY_JSON, path) as temps:
            for tmp, text in zip(temps, texts):
                tmp.write_text(text, encoding="utf-8")
    return path


def run_name(settings: Mapping[str, Any], when: datetime) -> str:
    """The file name of one sign-off: ``verify-<UTC time>-<8 hex of the settings' SHA-256>``
    (no suffix), so that runs at different times or with different settings never collide."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    return f"verify-{when.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"


def verify_run_count(layout_dir: Path) -> int:
    """How many sign-off records ``layout_dir/verify/`` holds (0 when it is not a layout)."""
    folder = Path(layout_dir) / VERIFY_RUNS
    if not (Path(layout_dir) / LAYOUT_FILE).is_file() or not folder.is_dir():
        return 0
    return sum(1 for path in folder.glob("*.json") if path.is_file())


def write_run_record(layout_dir: Path, verify: VerifyRecord | Mapping[str, Any],
                     name: str) -> Path:
    """Keep one sign-off as ``layout_dir/verify/<name>.json`` (``run_name``), beside the latest
    one (``verify.json``): earlier runs stay. A record is never replaced: the same settings in
    the same second get ``-2``, ``-3``, ... appended."""
    folder = Path(layout_dir) / VERIFY_RUNS
    folder.mkdir(exist_ok=True)
    # Written whole to a private temporary file, then linked to its name: a run interrupted
    # while writing leaves no half record, and os.link never replaces an earlier run's file.
    temp = folder / f".{name}.{os.getpid()}.tmp"
    temp.write_text(parse_verify(verify).model_dump_json(indent=1) + "\n", encoding="utf-8")
    try:
        for count in range(1, 1000):
            path = folder / (f"{name}.json" if count == 1 else f"{name}-{count}.json")
            try:
                os.link(temp, path)
                return path
            except FileExistsError:
                continue
    finally:
        temp.unlink()
    raise OutputError(f"'{folder}' holds 999 runs named {name}; remove some")


def write_verify_output(output: Path, doc: LayoutDoc,
                        verify: VerifyRecord | Mapping[str, Any]) -> tuple[Path, Path]:
    """``neftc verify -o OUTPUT``: the record as ``OUTPUT`` (a ``.json`` name, checked by
    ``check_verify_output``) and its report as ``OUTPUT`` with ``.html``, together
    (``atomic_files``); the layout directory is not touched."""
    record = parse_verify(verify)
    html = output.with_suffix(".html")
    texts = (record.model_dump_json(indent=1) + "\n", render_report(doc, record))
    with atomic_files(output, html) as temps:
        for tmp, text in zip(temps, texts):
            tmp.write_text(text, encoding="utf-8")
    return output, html


def check_verify_output(output: Path) -> None:
    """Refuse a ``verify -o`` path before the run: it must be a new ``.json`` file in an
    existing folder (its report goes beside it, as ``.html``); nothing is overwritten."""
    if output.suffix.lower() != ".json":
        raise OutputError(f"verify -o '{output}': give a .json file name (its report is written "
                          f"beside it as .html), e.g. {output.with_suffix('.json').name}")
    if not output.parent.is_dir():
        raise OutputError(f"verify -o '{output}': folder '{output.parent}' does not exist; "
                          "create it first")
    for path in (output, output.with_suffix(".html")):
        if path.exists() or path.is_symlink():
            raise OutputError(f"verify -o '{output}': '{path}' already exists and is never "
                              "overwritten; remove it or choose another name")


def write_layout_reports(layout_dir: Path, doc: LayoutDoc) -> None:
    """Write the human-readable files of a layout already in place: ``report.txt`` (the summary
    table) and ``report.html`` (with the ``verify.json`` in the directory, if any).

    Called by compile and calibrate after ``write_layout`` has swapped the layout in. Both files
    are one transaction (``atomic_files``) under the layout's lock, and are written only when
    the directory still holds ``doc`` (its ``layout.json``): if another compile replaced the
    layout meanwhile, its own reports describe it and nothing is written here.
    """
    layout_dir = Path(layout_dir)
    with directory_lock(layout_dir, required=False):
        try:
            current = (layout_dir / LAYOUT_FILE).read_bytes()
        except OSError:
            return
        if current != document_bytes(doc):
            return
        stored = read_verify(layout_dir)
        texts = (format_summary(summarize(doc)),
                 render_report(doc, stored[1] if stored else None))
        with atomic_files(layout_dir / REPORT_FILE, layout_dir / REPORT_HTML) as temps:
            for tmp, text in zip(temps, texts):
                tmp.write_text(text, encoding="utf-8")


def _atomic_write(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
