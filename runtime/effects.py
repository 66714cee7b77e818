"""Which device effects a chip instance shows, and at what time: the runtime's view of the
target's ``effects`` (``neftc.targets.physics``) after the user's switches.

``Effects`` is a value: the target's ``EffectsSpec`` with every effect the user switched off
(``--ideal EFFECT``, ``Emulator(..., ideal=...)``) reset to its default (off), and the time after
programming at which the chip is read (``--t-inference``; drift only). With every effect off it
equals ``Effects()``, and every path computes exactly as before the effects existed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from neftc.errors import NeftcError
from neftc.targets.physics import (
    TIME_MAX_S,
    ConverterErrorSpec,
    DriftSpec,
    EffectsSpec,
    ReadNoiseSpec,
    WireSpec,
    WriteVerifySpec,
)

#: The effects a user can switch off, by name (``--ideal NAME``), in the order they act.
EFFECT_NAMES = ("write-verify", "clip", "drift", "ir-drop", "read-noise", "dac", "adc")


@dataclass(frozen=True)
class Effects:
    """The device effects one chip instance shows (all off by default).

    ``spec``: the target's effects with the switched-off ones at their defaults.
    ``t_inference_s``: seconds after programming at which the chip is read (None: at the drift
    model's reference time ``spec.drift.t0_s``, i.e. before any drift)."""

    spec: EffectsSpec = field(default_factory=EffectsSpec)
    t_inference_s: float | None = None

    @property
    def write_verify(self) -> bool:
        return self.spec.write_verify.max_pulses > 0

    @property
    def clip(self) -> bool:
        return self.spec.clip

    @property
    def drift(self) -> bool:
        """True when the cells have drifted at the inference time."""
        return self.spec.drifts_at(self.t_inference_s)

    @property
    def ir_drop(self) -> bool:
        return self.spec.wire.r_segment_ohm > 0

    @property
    def read_noise(self) -> bool:
        return self.spec.read_noise.std_rel > 0

    @property
    def dac(self) -> bool:
        return _converter_on(self.spec.dac)

    @property
    def adc(self) -> bool:
        return _converter_on(self.spec.adc)

    @property
    def time_s(self) -> float:
        """Seconds after programming at which the chip is read."""
        return self.spec.drift.t0_s if self.t_inference_s is None else self.t_inference_s

    @property
    def active(self) -> tuple[str, ...]:
        """The names of the effects that change what the chip computes, in ``EFFECT_NAMES``
        order."""
        on = {"write-verify": self.write_verify, "clip": self.clip, "drift": self.drift,
              "ir-drop": self.ir_drop, "read-noise": self.read_noise, "dac": self.dac,
              "adc": self.adc}
        return tuple(name for name in EFFECT_NAMES if on[name])

    @property
    def cell_level(self) -> bool:
        """True when a chip's cells must be drawn one by one (not only each weight's folded
        noise): an effect acts on single cells at programming time."""
        return self.spec.cell_level_at(self.t_inference_s)


def _converter_on(spec: ConverterErrorSpec) -> bool:
    return spec.offset_lsb_std > 0 or spec.gain_rel_std > 0 or spec.inl_lsb > 0


_OFF = {"write-verify": {"write_verify": WriteVerifySpec()}, "clip": {"clip": False},
        "drift": {"drift": DriftSpec()}, "ir-drop": {"wire": WireSpec()},
        "read-noise": {"read_noise": ReadNoiseSpec()}, "dac": {"dac": ConverterErrorSpec()},
        "adc": {"adc": ConverterErrorSpec()}}


def effects_for(spec: EffectsSpec, *, ideal: Collection[str] = (),
                t_inference_s: float | None = None) -> Effects:
    """The effects of a target's ``spec`` with those named in ``ideal`` switched off (a name of
    ``EFFECT_NAMES``, or ``"all"``), read ``t_inference_s`` seconds after programming."""
    unknown = sorted(set(ideal) - {*EFFECT_NAMES, "all"})
    if unknown:
        raise NeftcError(f"unknown device effect(s) {', '.join(map(repr, unknown))} for "
                         f"--ideal; the effects are {', '.join(EFFECT_NAMES)}, or 'all'")
    if t_inference_s is not None and not 0 < t_inference_s <= TIME_MAX_S:
        raise NeftcError(f"--t-inference must be in (0, {TIME_MAX_S:g}] seconds after "
                         f"programming, got {t_inference_s!r}")
    names = EFFECT_NAMES if "all" in ideal else tuple(ideal)
    updates: dict[str, object] = {}
    for name in names:
        updates.update(_OFF[name])
    return Effects(spec.model_copy(update=updates), t_inference_s)
