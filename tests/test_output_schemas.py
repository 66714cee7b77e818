"""The typed outputs (verify, summary, cost, programming manifest, demo): their JSON Schemas in
docs/ are the models', real outputs parse with the models, and the report is written after the
layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ValidationError

from neftc.cli.main import main
from neftc.driver.compiler import compile_module
from neftc.errors import OutputError
from neftc.flow.records import (
    SCHEMAS,
    CostEstimate,
    LayoutSummary,
    ProgrammingManifest,
    VerifyRecord,
    schema_text,
)
from neftc.flow.report import REPORT_HTML, VERIFY_JSON, write_layout_reports
from neftc.format.reader import load_layout
from neftc.format.schema import REPORT_FILE
from neftc.frontend.zoo import build

DOCS = Path(__file__).resolve().parent.parent / "docs"
REGENERATE = ("python -c \"from neftc.flow.records import write_schemas; "
              "write_schemas('docs')\"")


@pytest.fixture
def layout(lenet_layout: Path) -> Path:
    return lenet_layout


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_files_are_the_models(name: str) -> None:
    path = DOCS / name
    assert path.is_file() and path.read_text() == schema_text(SCHEMAS[name]), (
        f"docs/{name} differs from the model {SCHEMAS[name].__name__}; regenerate every output "
        f"schema from the repository root with:\n{REGENERATE}\nand update the docs that "
        "describe the output")


def test_schemas_forbid_unknown_fields() -> None:
    """Every object of every schema is closed: a renamed field cannot slip through unnoticed."""
    for name, model in SCHEMAS.items():
        schema = model.model_json_schema()
        objects = [schema, *schema.get("$defs", {}).values()]
        for obj in objects:
            if obj.get("type") == "object":
                assert obj.get("additionalProperties") is False, (name, obj.get("title"))


def roundtrip(model: type[BaseModel], text: str) -> BaseModel:
    """Parse ``text`` with the model; writing the record again gives the same JSON data."""
    record = model.model_validate_json(text)
    assert json.loads(record.model_dump_json()) == json.loads(text)
    return record


@pytest.mark.parametrize("ideal", [True, False])
def test_verify_outputs_parse_with_the_model(layout, capsys, ideal: bool) -> None:
    args = ["verify", str(layout), "--mc", "2", "--sigma", "0.1", "-q", "--json"]
    assert main(args + (["--ideal-periphery"] if ideal else [])) == 0
    printed = capsys.readouterr().out
    record = roundtrip(VerifyRecord, printed)
    assert isinstance(record, VerifyRecord) and record.format == "neftc-verify"
    assert (record.periphery == "ideal") == ideal
    assert record.results[0].mc.trials == 2 and record.results[0].sigma == 0.1
    saved = (layout / VERIFY_JSON).read_text()  # the file verify saves is the same record
    assert VerifyRecord.model_validate_json(saved) == record
    if not ideal:  # verify's own DAC ranges, one per crossbar layer
        assert record.periphery != "ideal"
        assert set(record.periphery.dac_layers) == {x.name for x in load_layout(layout).doc.layers}


def test_one_chip_has_no_confidence_interval(layout, capsys) -> None:
    """NaN is not JSON: with one chip instance the CI half-width is null, and the text shows
    '-' (no interval), never nan."""
    assert main(["verify", str(layout), "--mc", "1", "--sigma", "0.1", "-q", "--json",
                 "--ideal-periphery", "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and json.loads(text)["results"][0]["mc"]["ci95"] is None
    assert main(["verify", str(layout), "--mc", "1", "--sigma", "0.1", "-q",
                 "--ideal-periphery", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and out.strip().splitlines()[-1].split()[3] == "-"


def test_a_verify_record_with_an_unknown_field_is_refused(layout, capsys) -> None:
    assert main(["verify", str(layout), "--mc", "2", "--sigma", "0.1", "-q", "--json",
                 "--ideal-periphery", "--no-report"]) == 0
    data = json.loads(capsys.readouterr().out)
    data["results"][0]["mc"]["median"] = 0.5
    with pytest.raises(ValidationError, match="median"):
        VerifyRecord.model_validate(data)
    record = VerifyRecord.model_validate(json.loads(json.dumps(data).replace(', "median": 0.5',
                                                                             "")))
    with pytest.raises(ValidationError):  # frozen: a record is not edited after it is built
        record.results[0].mc.mean = 1.0  # type: ignore[misc]


def test_summary_and_cost_parse_with_the_models(layout, capsys) -> None:
    assert main(["inspect", str(layout), "--json"]) == 0
    summary = roundtrip(LayoutSummary, capsys.readouterr().out)
    assert isinstance(summary, LayoutSummary)
    doc = load_layout(layout).doc
    assert [x.name for x in summary.layers] == [x.name for x in doc.layers]
    cost = roundtrip(CostEstimate, summary.cost.model_dump_json())
    assert isinstance(cost, CostEstimate)
    # The energy total is the sum of its parts (relative 1e-12: float sums in another order).
    parts = cost.energy_pj.model_dump()
    total = parts.pop("total_pj")
    assert total == pytest.approx(sum(parts.values()), rel=1e-12) and total > 0


def test_programming_manifest_parses_with_the_model(layout, tmp_path, capsys) -> None:
    assert main(["program", str(layout), "-o", str(tmp_path / "prog")]) == 0
    text = (tmp_path / "prog" / "manifest.json").read_text()
    manifest = roundtrip(ProgrammingManifest, text)
    assert isinstance(manifest, ProgrammingManifest)
    doc = load_layout(layout).doc
    assert manifest.levels == len(manifest.level_conductance_us) == 2**doc.target.cell.bits
    assert sum(a.programmed_cells for a in manifest.arrays) == doc.summary.cells_used


# ------------------------------------------------------------------ the report after the layout


def test_compile_writes_the_layout_without_reports_then_the_reports(layout, monkeypatch,
                                                                    fefet) -> None:
    """write_layout gets no extras; the reports appear after the swap, for this layout."""
    import neftc.format.writer as writer

    calls = []
    real = writer.write_layout

    def record(out_dir, doc, levels, tensors, extras=None):
        calls.append(extras)
        real(out_dir, doc, levels, tensors, extras)
        assert not (Path(out_dir) / REPORT_HTML).exists()  # the layout alone is swapped in

    monkeypatch.setattr("neftc.driver.compiler.write_layout", record)
    torch.manual_seed(1)
    compile_module(build("lenet", (1, 8, 8), 10), torch.zeros(1, 1, 8, 8), fefet, layout)
    assert calls == [None]
    doc = load_layout(layout).doc
    assert doc.source.path in (layout / REPORT_FILE).read_text()
    assert "<h2>Summary</h2>" in (layout / REPORT_HTML).read_text()


def test_reports_are_not_written_into_another_layout(layout, tmp_path, fefet) -> None:
    """A compile replaced the directory meanwhile: the older layout's reports are not written."""
    torch.manual_seed(2)
    other = compile_module(build("lenet", (1, 8, 8), 10), torch.zeros(1, 1, 8, 8), fefet,
                           tmp_path / "other").doc
    before = {p.name: p.read_bytes() for p in layout.iterdir()}
    write_layout_reports(layout, other)
    assert {p.name: p.read_bytes() for p in layout.iterdir()} == before


def test_a_report_failure_leaves_the_layout_without_a_wrong_report(layout, monkeypatch,
                                                                   fefet) -> None:
    """The report is written after the layout: if rendering fails, the new layout is in place
    (whole, checksummed) and no report of the previous layout stays beside it."""
    def broken(*_args, **_kwargs):
        raise OutputError("simulated rendering failure")

    monkeypatch.setattr("neftc.flow.report.render_report", broken)
    torch.manual_seed(3)
    with pytest.raises(OutputError, match="simulated"):
        compile_module(build("lenet", (1, 8, 8), 10), torch.zeros(1, 1, 8, 8), fefet, layout)
    load_layout(layout)
    assert not (layout / REPORT_HTML).exists() and not (layout / REPORT_FILE).exists()
    assert [p.name for p in layout.parent.iterdir() if p.name.startswith(".")] == []
