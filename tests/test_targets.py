"""Target specs: presets, sources, overrides, spec files, did-you-mean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydantic
import pytest
import yaml

from neftc.errors import TargetError
from neftc.targets import builtin_targets, resolve_target, target_tags
from neftc.targets.device_model import level_conductances_us
from neftc.targets.presets import preset_dicts
from neftc.targets.registry import _all_paths
from neftc.targets.spec import TargetSpec


def test_required_presets_exist() -> None:
    tags = set(target_tags())
    assert "fefet_128x128" in tags
    for device in ("rram1", "fefet2", "rram4", "fefet6"):
        for size in (128, 256):
            assert f"{device}_{size}x{size}" in tags


@pytest.mark.parametrize("tag", sorted(preset_dicts()))
def test_every_number_has_a_source(tag: str) -> None:
    spec = builtin_targets()[tag]
    missing = []
    paths = _all_paths(TargetSpec)
    assert "effects.read_noise.std_rel" in paths  # nested records are walked
    for path in paths:
        if path in ("name", "description", "sources"):
            continue
        if path not in spec.sources or not spec.sources[path].strip():
            missing.append(path)
    assert not missing, f"{tag}: fields without a source: {missing}"
    assert set(spec.sources) <= set(paths), f"{tag}: sources of no field"


def test_device_models_match_the_paper() -> None:
    targets = builtin_targets()
    for device, s in (("rram1", 1.0), ("fefet2", 2.0), ("rram4", 4.0), ("fefet6", 6.0)):
        spec = targets[f"{device}_128x128"]
        assert spec.noise.state_ratio == s
        # 8-bit weights on four 2-bit cells, q_max = 255 (NeFT paper).
        assert (spec.weight.bits, spec.cell.bits, spec.slices, spec.qmax) == (8, 2, 4, 255)
    assert targets["rram1_256x256"].array.rows == 256


def test_derived_quantities_for_offset_encoding() -> None:
    spec = resolve_target("fefet_128x128", ["weight.sign_encoding=offset"])
    assert spec.polarities == 1 and spec.qmax == 127 and spec.qmin == -128


def test_override_is_applied_and_validated() -> None:
    spec = resolve_target("rram4_128x128", ["noise.sigma_rel=0.35", "chip.cores=2"])
    assert spec.noise.sigma_rel == 0.35 and spec.chip.cores == 2
    with pytest.raises(TargetError, match="greater than or equal to 0"):
        resolve_target("rram4_128x128", ["noise.sigma_rel=-0.1"])
    with pytest.raises(TargetError, match="valid integer"):
        resolve_target("rram4_128x128", ["array.rows=big"])


def test_override_typo_suggests_field() -> None:
    with pytest.raises(TargetError, match=r"Did you mean 'noise\.sigma_rel'"):
        resolve_target("fefet_128x128", ["noise.sigma=0.1"])
    with pytest.raises(TargetError, match="key=value"):
        resolve_target("fefet_128x128", ["noise.sigma_rel"])


def test_unknown_tag_suggests_and_lists() -> None:
    with pytest.raises(TargetError) as info:
        resolve_target("fefet_128x12")
    assert "Did you mean 'fefet_128x128'" in str(info.value)
    assert "rram1_256x256" in str(info.value)


def test_spec_file_round_trip(tmp_path: Path) -> None:
    spec = resolve_target("fefet6_256x256")
    path = tmp_path / "chip.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    assert resolve_target(str(path)) == spec
    json_path = tmp_path / "chip.json"
    json_path.write_text(json.dumps(spec.model_dump(mode="json")))
    assert resolve_target(str(json_path), ["noise.sigma_rel=0.2"]).noise.sigma_rel == 0.2


def test_spec_file_typo_gets_did_you_mean(tmp_path: Path) -> None:
    raw = resolve_target("fefet_128x128").model_dump(mode="json")
    raw["periphery"]["adc_bitz"] = raw["periphery"].pop("adc_bits")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TargetError) as info:
        resolve_target(str(path))
    message = str(info.value)
    assert "unknown field 'periphery.adc_bitz'" in message
    assert "Did you mean 'adc_bits'" in message
    assert "missing field 'periphery.adc_bits'" in message


def test_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="does not exist"):
        resolve_target(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("array: [1, 2\n")
    with pytest.raises(TargetError, match="not valid YAML"):
        resolve_target(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(TargetError, match="mapping"):
        resolve_target(str(scalar))


def test_spec_is_frozen() -> None:
    spec = resolve_target("fefet_128x128")
    rows = spec.array.rows
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.array.rows = rows + 1  # type: ignore[misc]
    assert spec.array.rows == rows


@pytest.mark.parametrize("tag", sorted(preset_dicts()))
def test_level_conductances_follow_the_docs(tag: str) -> None:
    """docs/programming.md: level ``l`` of ``L = 2**cell.bits`` is programmed to
    ``g_min + l / (L-1) * (g_max - g_min)`` microsiemens, from the preset's own numbers."""
    cell = builtin_targets()[tag].cell
    levels = 2**cell.bits
    expected = cell.g_min_us + np.arange(levels) / (levels - 1) * (cell.g_max_us - cell.g_min_us)
    got = np.asarray(level_conductances_us(cell.g_min_us, cell.g_max_us, levels))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert got[0] == cell.g_min_us and got[-1] == pytest.approx(cell.g_max_us, rel=1e-12)
    assert np.all(np.diff(got) > 0)
