"""Built-in target presets: data, with a source for every number.

A preset is a plain dict that validates into a ``TargetSpec``. The four device models are those of
the NeFT paper (Qin et al., "NeFT: Negative Feedback Training to Improve Robustness of
Compute-In-Memory DNN Accelerators", IEEE TCAD 2025): RRAM1, FeFET2, RRAM4 and FeFET6, where the
number is the state-dependence ratio ``s``. Chip organisation and per-operation costs follow ISAAC
(Shafiee et al., ISCA 2016, Table 1, 32 nm), the usual reference for crossbar accelerator cost.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

NEFT = "Qin et al., IEEE TCAD 2025 (NeFT)"
ISAAC = "Shafiee et al., ISCA 2016 (ISAAC), Table 1"

_COMMON: dict[str, Any] = {
    "weight": {"bits": 8, "sign_encoding": "differential"},
    "periphery": {"input_bits": 8, "dac_bits_per_cycle": 1, "adc_bits": 8, "adcs_per_array": 1},
    "noise": {"sigma_rel": 0.1},
    "faults": {"stuck_at_min_rate": 0.0, "stuck_at_max_rate": 0.0},
    "chip": {"core_links": "mesh"},
    "cost": {
        "array_read_energy_pj": 30.0,
        "array_read_latency_ns": 100.0,
        "adc_energy_pj": 1.56,
        "dac_energy_pj": 0.39,
        "digital_add_energy_pj": 0.04,
        "link_energy_pj_per_byte": 8.75,
        "cell_write_energy_pj": 10.0,
        "cell_write_latency_ns": 100.0,
    },
}

_COMMON_SOURCES: dict[str, str] = {
    "cell.bits": f"{NEFT}: 8-bit weights on four 2-bit cells",
    "weight.bits": f"{NEFT}: 8-bit weights, q_max = 255",
    "weight.sign_encoding": "differential pair, the usual signed-weight mapping (ISAAC uses a bias"
    " column instead; set weight.sign_encoding=offset for that)",
    "periphery.input_bits": f"{ISAAC}: 16-bit inputs fed 1 bit per cycle; 8 here to match the"
    f" 8-bit weights of {NEFT}",
    "periphery.dac_bits_per_cycle": f"{ISAAC}: 1-bit DACs, bit-serial inputs",
    "periphery.adc_bits": f"{ISAAC}: 8-bit ADC at 1.28 GS/s",
    "periphery.adcs_per_array": f"{ISAAC}: 8 ADCs per IMA of 8 crossbars",
    "noise.sigma_rel": f"nominal; {NEFT} sweeps 0.1-0.4; override with --set noise.sigma_rel=S",
    "faults.stuck_at_min_rate": "off by default (no fault data in the paper)",
    "faults.stuck_at_max_rate": "off by default (no fault data in the paper)",
    "chip.core_links": f"{ISAAC}: tiles joined by a concentrated mesh",
    "cost.array_read_energy_pj": f"{ISAAC}: 8 crossbars 2.4 mW, 100 ns read cycle -> 0.3 mW x"
    " 100 ns per 128x128 array",
    "cost.array_read_latency_ns": f"{ISAAC}: 100 ns crossbar read",
    "cost.adc_energy_pj": f"{ISAAC}: 2 mW per 8-bit ADC at 1.28 GS/s -> 1.56 pJ per conversion",
    "cost.dac_energy_pj": f"{ISAAC}: 1024 1-bit DACs 4 mW per IMA, 100 ns cycle -> 0.39 pJ",
    "cost.digital_add_energy_pj": f"{ISAAC}: shift-and-add 0.2 mW for 4 units at 1.28 GHz ->"
    " ~0.04 pJ per operation",
    "cost.link_energy_pj_per_byte": f"{ISAAC}: router 42 mW per 4 tiles at 1.2 GHz x 4 B ->"
    " ~8.75 pJ/B (approximate)",
    "cost.cell_write_energy_pj": "assumption: one program-and-verify pulse of a RRAM/FeFET cell,"
    " order of magnitude (a few pJ per pulse plus the verify read); without write-verify"
    " (effects.write_verify.max_pulses 0) one pulse per cell",
    "cost.cell_write_latency_ns": "assumption: one program pulse plus its verify read, about"
    " 100 ns for RRAM/FeFET (the ISAAC crossbar read cycle is 100 ns)",
}

# Device effects besides programming variation (``neftc.targets.physics``): off in the paper's
# device models, which model programming variation only; docs/emulator.md, "Device effects",
# says how each acts and how to switch it on (--set effects.FIELD=VALUE).
_OFF = f"off: {NEFT} models programming variation only"
_EFFECT_SOURCES: dict[str, str] = {
    "effects.clip": f"{_OFF} (its Gaussian cells may leave the conductance range)",
    "effects.read_noise.std_rel": _OFF,
    "effects.drift.nu": f"{_OFF} (read right after programming)",
    "effects.drift.nu_std": _OFF,
    "effects.drift.t0_s": "reference read 1 s after programming (assumption; used only with"
    " drift on)",
    "effects.drift.compensation": "global drift compensation, the usual choice (e.g. IBM"
    " aihwkit's GlobalDriftCompensation); used only with drift on",
    "effects.wire.r_segment_ohm": f"{_OFF} (ideal wires)",
    "effects.adc.offset_lsb_std": f"{_OFF} (ideal ADC)",
    "effects.adc.gain_rel_std": f"{_OFF} (ideal ADC)",
    "effects.adc.inl_lsb": f"{_OFF} (ideal ADC)",
    "effects.dac.offset_lsb_std": f"{_OFF} (ideal DAC)",
    "effects.dac.gain_rel_std": f"{_OFF} (ideal DAC)",
    "effects.dac.inl_lsb": f"{_OFF} (ideal DAC)",
    "effects.write_verify.max_pulses": f"{_OFF}: the variation is what one programming pulse"
    " leaves",
}

# The "_effects" presets: the paper's device models with one set of typical device effects on
# (docs/emulator.md, "Device effects"; measured in docs/results.md). Write-verify stays off: the
# device model's sigma is the variation programming leaves.
_AIHWKIT_RRAM = ("IBM aihwkit ReRamWan2022NoiseModel docs: short-term read noise about 1 %"
                 " (Wan et al., Nature 608, 504 (2022))")
_SAR_ADC = "assumption: an uncalibrated 8-bit SAR ADC"
_TYPICAL_EFFECTS: dict[str, Any] = {
    "clip": True,
    "read_noise": {"std_rel": 0.01},
    "drift": {"nu": 0.01, "nu_std": 0.005, "t0_s": 1.0, "compensation": "global"},
    "wire": {"r_segment_ohm": 2.5},
    "adc": {"offset_lsb_std": 0.5, "gain_rel_std": 0.005, "inl_lsb": 0.5},
    "dac": {"offset_lsb_std": 0.0, "gain_rel_std": 0.01, "inl_lsb": 0.0},
    "write_verify": {"max_pulses": 0},
}
_TYPICAL_SOURCES: dict[str, str] = {
    "effects.clip": "conductances cannot leave the device's window (aihwkit clamps programmed"
    " conductances at 0)",
    "effects.read_noise.std_rel": _AIHWKIT_RRAM,
    "effects.drift.nu": "assumption: RRAM/FeFET conductance relaxation of a few % per decade of"
    " time (PCM's nu ~ 0.05 for scale); read the chip later with --t-inference",
    "effects.drift.nu_std": "assumption (half of nu)",
    "effects.drift.t0_s": "reference read 1 s after programming (assumption)",
    "effects.drift.compensation": "global drift compensation, the usual choice (e.g. IBM"
    " aihwkit's GlobalDriftCompensation)",
    "effects.wire.r_segment_ohm": "assumption: Cu interconnect at a ~22 nm node, order of"
    " magnitude",
    "effects.adc.offset_lsb_std": _SAR_ADC,
    "effects.adc.gain_rel_std": _SAR_ADC,
    "effects.adc.inl_lsb": _SAR_ADC,
    "effects.dac.offset_lsb_std": "1-bit wordline drivers: no offset modelled (a 0 input drives 0"
    " V)",
    "effects.dac.gain_rel_std": "assumption: 1-bit wordline drivers' voltage mismatch",
    "effects.dac.inl_lsb": "1-bit DACs have no non-linearity",
    "effects.write_verify.max_pulses": "off: the device model's sigma is the variation"
    " programming leaves (set it to add a verify loop on top)",
}

# Device models: the state-dependence ratio s of each of the paper's four devices, and the
# conductance range and write-verify band of the technology.
_DEVICES: dict[str, dict[str, Any]] = {
    "rram1": {"family": "rram", "s": 1.0},
    "fefet2": {"family": "fefet", "s": 2.0},
    "rram4": {"family": "rram", "s": 4.0},
    "fefet6": {"family": "fefet", "s": 6.0},
}

_FAMILIES: dict[str, dict[str, Any]] = {
    "rram": {
        "cell": {"g_min_us": 2.0, "g_max_us": 20.0, "write_verify_tolerance_rel": 0.05},
        "sources": {
            "cell.g_min_us": "Yao et al., Nature 577, 641 (2020): TaOx/HfOx RRAM programmed in"
            " 2-20 uS",
            "cell.g_max_us": "Yao et al., Nature 577, 641 (2020): TaOx/HfOx RRAM programmed in"
            " 2-20 uS",
            "cell.write_verify_tolerance_rel": "assumption: +-5 % of range, well inside half a"
            " level spacing (1/6 of range for 2-bit cells)",
        },
    },
    "fefet": {
        "cell": {"g_min_us": 0.1, "g_max_us": 10.0, "write_verify_tolerance_rel": 0.05},
        "sources": {
            "cell.g_min_us": "Jerry et al., IEDM 2017 (FeFET analog synapse): ~0.1-10 uS"
            " channel conductance window (approximate)",
            "cell.g_max_us": "Jerry et al., IEDM 2017 (FeFET analog synapse): ~0.1-10 uS"
            " channel conductance window (approximate)",
            "cell.write_verify_tolerance_rel": "assumption: +-5 % of range, well inside half a"
            " level spacing (1/6 of range for 2-bit cells)",
        },
    },
}

# Array sizes: arrays per core keep the chip's total cell count equal to ISAAC's
# (168 tiles x 12 IMAs x 8 crossbars of 128x128).
_SIZES: dict[int, dict[str, Any]] = {
    128: {"cores": 168, "arrays_per_core": 96, "area_um2": 1246.0},
    256: {"cores": 168, "arrays_per_core": 24, "area_um2": 1346.0},
}
_SIZE_SOURCES: dict[int, dict[str, str]] = {
    128: {
        "array.rows": f"{ISAAC}: 128x128 crossbars",
        "array.cols": f"{ISAAC}: 128x128 crossbars",
        "chip.cores": f"{ISAAC}: 168 tiles",
        "chip.arrays_per_core": f"{ISAAC}: 12 IMAs x 8 crossbars per tile",
        "cost.array_area_um2": f"{ISAAC}: crossbar 25 um2 + ADC 1200 um2 + DACs 21 um2 per array",
    },
    256: {
        "array.rows": "256x256 variant of the 128x128 preset",
        "array.cols": "256x256 variant of the 128x128 preset",
        "chip.cores": f"{ISAAC}: 168 tiles",
        "chip.arrays_per_core": f"{ISAAC} cell count per tile (96 x 128x128) in 256x256 arrays",
        "cost.array_area_um2": f"{ISAAC} scaled: crossbar 4 x 25 um2 + ADC 1200 um2 + 2 x 21 um2"
        " DACs + margin (approximate)",
    },
}


def _preset(tag: str, device: str, size: int, description: str) -> dict[str, Any]:
    dev = _DEVICES[device]
    family = _FAMILIES[dev["family"]]
    size_info = _SIZES[size]
    spec = deepcopy(_COMMON)
    spec["name"] = tag
    spec["description"] = description
    spec["array"] = {"rows": size, "cols": size}
    spec["cell"] = {"bits": 2, **family["cell"]}
    spec["noise"]["state_ratio"] = dev["s"]
    spec["chip"].update(cores=size_info["cores"], arrays_per_core=size_info["arrays_per_core"])
    spec["cost"]["array_area_um2"] = size_info["area_um2"]
    sources = dict(_COMMON_SOURCES)
    sources.update(_EFFECT_SOURCES)
    sources.update(family["sources"])
    sources.update(_SIZE_SOURCES[size])
    sources["noise.state_ratio"] = f"{NEFT}: device model {device.upper()}, s = {dev['s']:g}"
    spec["sources"] = sources
    return spec


def preset_dicts() -> dict[str, dict[str, Any]]:
    """All built-in presets by tag, as plain dicts (freshly built on every call)."""
    presets: dict[str, dict[str, Any]] = {}
    for size in (128, 256):
        presets[f"fefet_{size}x{size}"] = _preset(
            f"fefet_{size}x{size}",
            "fefet2",
            size,
            f"FeFET chip, {size}x{size} arrays, 2-bit cells, the paper's FeFET2 device model",
        )
        for device in _DEVICES:
            tag = f"{device}_{size}x{size}"
            presets[tag] = _preset(
                tag,
                device,
                size,
                f"{device.upper()} device model of the NeFT paper, {size}x{size} arrays, "
                "2-bit cells",
            )
            effects = _preset(
                f"{tag}_effects", device, size,
                f"{device.upper()} device model of the NeFT paper with typical device effects, "
                f"{size}x{size} arrays, 2-bit cells")
            effects["effects"] = deepcopy(_TYPICAL_EFFECTS)
            effects["sources"].update(_TYPICAL_SOURCES)
            presets[f"{tag}_effects"] = effects
    return presets
