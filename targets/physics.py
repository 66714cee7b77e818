"""Device physics beyond programming variation, as parts of the target spec (``effects``).

Each effect is a frozen pydantic model whose defaults switch it off, so a spec or a layout that
does not name an effect computes exactly as before it existed. Units are part of the field names
(``_rel`` relative to a cell's full conductance range, ``_lsb`` converter steps, ``_s`` seconds,
``_ohm`` ohms). How each one acts on a chip: docs/emulator.md, "Device effects"; the runtime's
switches (``--ideal EFFECT``): ``neftc.runtime.effects``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Largest read-noise std relative to the full range (as ``noise.sigma_rel``).
READ_NOISE_REL_MAX = 2.0
#: Longest time after programming a drift model is evaluated at: about 30 years.
TIME_MAX_S = 1e9
#: Largest wire segment resistance (a wire of 1 Mohm per cell is no crossbar).
WIRE_OHM_MAX = 1e6
#: Largest converter offset or non-linearity, in steps of the converter.
CONVERTER_LSB_MAX = 1e3
#: Most write-verify pulses per cell.
WRITE_PULSES_MAX = 1000


class SpecRecord(BaseModel):
    """The base of every target spec record: frozen, no unknown keys, finite floats only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ReadNoiseSpec(SpecRecord):
    """Cycle-to-cycle (read) noise: every read of a cell adds fresh noise."""

    std_rel: float = Field(
        default=0.0, ge=0, le=READ_NOISE_REL_MAX,
        description="std of a cell's conductance at each read (one MVM), relative to the full "
        "range; independent per cell and per read (0: off)")


class DriftSpec(SpecRecord):
    """Conductance drift after programming: ``g(t) = g(t0) (t / t0)^-nu`` per cell."""

    nu: float = Field(default=0.0, ge=0, le=1,
                      description="mean drift exponent nu (0: off)")
    nu_std: float = Field(default=0.0, ge=0, le=1,
                          description="std of nu from cell to cell (drawn once per chip; a "
                          "negative draw is taken as 0)")
    t0_s: float = Field(default=1.0, gt=0, le=TIME_MAX_S,
                        description="time after programming of the reference read that "
                        "defines g(t0), seconds")
    compensation: Literal["none", "global"] = Field(
        default="global", description="'global': one calibration read at the inference time "
        "rescales each layer's outputs by the mean drift of its cells (the usual global drift "
        "compensation); 'none': outputs shrink with the drift")


class WireSpec(SpecRecord):
    """Parasitic wire resistance of the wordlines and bitlines (IR drop)."""

    r_segment_ohm: float = Field(default=0.0, ge=0, le=WIRE_OHM_MAX,
                                 description="resistance of one wordline or bitline segment "
                                 "between two adjacent cells, ohms (0: off)")


class ConverterErrorSpec(SpecRecord):
    """Static errors of each DAC (one per wordline) or ADC (one per bitline), drawn once per
    chip, plus a non-linearity common to all."""

    offset_lsb_std: float = Field(default=0.0, ge=0, le=CONVERTER_LSB_MAX,
                                  description="std of each converter's offset, in its steps")
    gain_rel_std: float = Field(default=0.0, ge=0, le=1,
                                description="std of each converter's relative gain error")
    inl_lsb: float = Field(default=0.0, ge=0, le=CONVERTER_LSB_MAX,
                           description="integral non-linearity: the peak of a bow that is zero "
                           "at both ends of the range, in steps")


class WriteVerifySpec(SpecRecord):
    """Program-and-verify: a cell read back outside the tolerance band is programmed again."""

    max_pulses: int = Field(default=0, ge=0, le=WRITE_PULSES_MAX,
                            description="0: one programming pulse, nothing verified (the device "
                            "variation is what stays); N: a cell read outside "
                            "cell.write_verify_tolerance_rel is programmed again, up to N "
                            "pulses in all")


class EffectsSpec(SpecRecord):
    """The device effects a chip shows besides programming variation; all off by default."""

    clip: bool = Field(default=False, description="cells are programmed inside the device's "
                       "conductance window [g_min, g_max]: a programmed value outside it is "
                       "clipped to it (drift afterwards scales that value, never below 0)")
    read_noise: ReadNoiseSpec = ReadNoiseSpec()
    drift: DriftSpec = DriftSpec()
    wire: WireSpec = WireSpec()
    adc: ConverterErrorSpec = ConverterErrorSpec()
    dac: ConverterErrorSpec = ConverterErrorSpec()
    write_verify: WriteVerifySpec = WriteVerifySpec()

    def drifts_at(self, time_s: float | None) -> bool:
        """True when the cells have drifted ``time_s`` seconds after programming (None: at the
        reference read ``drift.t0_s``, before any drift)."""
        d = self.drift
        return (d.nu > 0 or d.nu_std > 0) and (d.t0_s if time_s is None else time_s) > d.t0_s

    def per_weight_at(self, time_s: float | None) -> bool:
        """True when an effect with a per-weight equivalent (what training can include) acts
        on the cells: write-verify, clip, drift at ``time_s``."""
        return self.write_verify.max_pulses > 0 or self.clip or self.drifts_at(time_s)

    def cell_level_at(self, time_s: float | None) -> bool:
        """True when an effect acts on single cells at programming time (the cells must be
        drawn one by one): those of ``per_weight_at``, and IR drop."""
        return self.per_weight_at(time_s) or self.wire.r_segment_ohm > 0
