"""The target spec: one frozen pydantic model per physical aspect of a CIM chip.

Units are part of the field names (``_us`` microsiemens, ``_pj`` picojoules, ``_ns`` nanoseconds,
``_um2`` square micrometres, ``_rel`` relative to a cell's full conductance range).

Every number is bounded: floats must be finite (no NaN or infinity anywhere), sizes and counts lie
in the ranges below, so that no spec can make a command allocate or loop without bound
(docs/security.md, "Specs, data and flags").
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from neftc.format import encoding
from neftc.targets.physics import EffectsSpec, SpecRecord

#: Largest device variation (``noise.sigma_rel``, ``--sigma``, ``--train-sigma``): twice the cell's
#: full conductance range, far beyond any device worth compiling for.
SIGMA_REL_MAX = 2.0
#: Largest array side (wordlines or bitlines).
ARRAY_SIDE_MAX = 4096
#: Most cores: placement keeps a cores x cores hop matrix and all pairs' shortest paths.
CORES_MAX = 1024
#: Most crossbar arrays on one chip (``cores * arrays_per_core``).
CHIP_ARRAYS_MAX = 2**20
#: Largest state-dependence ratio ``s`` (the NeFT paper's devices have 1 to 6).
STATE_RATIO_MAX = 1000.0
#: Largest conductance, microsiemens (1 S).
CONDUCTANCE_MAX_US = 1e6
#: Largest per-operation cost constant (pJ, ns or um2).
COST_MAX = 1e12


class ArraySpec(SpecRecord):
    """One crossbar array: wordlines (rows) x bitlines (columns)."""

    rows: int = Field(ge=1, le=ARRAY_SIDE_MAX, description="wordlines per array")
    cols: int = Field(ge=1, le=ARRAY_SIDE_MAX, description="bitlines per array")


class CellSpec(SpecRecord):
    """One memory cell."""

    bits: int = Field(ge=1, le=8, description="bits per cell; a cell holds 2**bits levels")
    g_min_us: float = Field(ge=0, le=CONDUCTANCE_MAX_US,
                            description="conductance of level 0, microsiemens")
    g_max_us: float = Field(gt=0, le=CONDUCTANCE_MAX_US,
                            description="conductance of the top level, microsiemens")
    write_verify_tolerance_rel: float = Field(
        ge=0, le=1, description="write-verify acceptance band, relative to the full range"
    )

    @property
    def levels(self) -> int:
        return 2**self.bits

    @model_validator(mode="after")
    def _range(self) -> CellSpec:
        if self.g_max_us <= self.g_min_us:
            raise ValueError(f"cell.g_max_us ({self.g_max_us:g}) must be larger than "
                             f"cell.g_min_us ({self.g_min_us:g})")
        return self


class WeightSpec(SpecRecord):
    """How a weight is quantised and encoded in cells."""

    bits: int = Field(
        ge=1,
        le=16,
        description=(
            "bits programmed per weight column: the magnitude for 'differential' (8 -> -255..255, "
            "as in the NeFT paper), the two's-range including sign for 'offset' (8 -> -128..127)"
        ),
    )
    sign_encoding: Literal["differential", "offset"] = Field(
        description=(
            "'differential': a positive and a negative column per weight column; "
            "'offset': one column holding q + 2**(bits-1), the offset removed digitally"
        )
    )


class PeripherySpec(SpecRecord):
    """Converters at the array edges."""

    input_bits: int = Field(ge=1, le=16, description="DAC resolution of the input activations")
    dac_bits_per_cycle: int = Field(
        ge=1, le=16, description="input bits applied per read cycle (1 = bit-serial)"
    )
    adc_bits: int = Field(ge=1, le=16, description="ADC resolution per bitline")
    adcs_per_array: int = Field(ge=1, le=ARRAY_SIDE_MAX,
                                description="ADCs shared by the columns of one array")


class NoiseSpec(SpecRecord):
    """Device-to-device programming variation (DESIGN.md section 4)."""

    sigma_rel: float = Field(
        ge=0, le=SIGMA_REL_MAX,
        description="std of the programmed conductance, relative to the full range",
    )
    state_ratio: float = Field(
        ge=1, le=STATE_RATIO_MAX,
        description="s: intermediate levels vary s times more than the two extreme levels",
    )


class FaultSpec(SpecRecord):
    """Optional stuck-at faults, as fractions of all cells."""

    stuck_at_min_rate: float = Field(default=0.0, ge=0, le=1)
    stuck_at_max_rate: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _total(self) -> FaultSpec:
        if self.stuck_at_min_rate + self.stuck_at_max_rate > 1:
            raise ValueError(f"faults.stuck_at_min_rate + faults.stuck_at_max_rate must be at "
                             f"most 1 (they are fractions of all cells), got "
                             f"{self.stuck_at_min_rate:g} + {self.stuck_at_max_rate:g}")
        return self


class ChipSpec(SpecRecord):
    """Chip organisation."""

    cores: int = Field(ge=1, le=CORES_MAX, description="compute cores")
    arrays_per_core: int = Field(ge=1, le=CHIP_ARRAYS_MAX, description="crossbar arrays per core")
    core_links: Literal["mesh", "ring", "all_to_all"] = Field(
        description="topology of the core-to-core network"
    )

    @property
    def arrays(self) -> int:
        return self.cores * self.arrays_per_core

    @model_validator(mode="after")
    def _size(self) -> ChipSpec:
        if self.arrays > CHIP_ARRAYS_MAX:
            raise ValueError(f"the chip has chip.cores x chip.arrays_per_core = {self.cores} x "
                             f"{self.arrays_per_core} = {self.arrays} arrays; at most "
                             f"{CHIP_ARRAYS_MAX} (2**20) are allowed")
        return self


class CostSpec(SpecRecord):
    """Per-operation cost constants for estimates."""

    array_read_energy_pj: float = Field(ge=0, le=COST_MAX, description="one read of a whole array")
    array_read_latency_ns: float = Field(ge=0, le=COST_MAX, description="one array read cycle")
    adc_energy_pj: float = Field(ge=0, le=COST_MAX, description="one ADC conversion")
    dac_energy_pj: float = Field(ge=0, le=COST_MAX,
                                 description="one DAC conversion (one wordline, one cycle)")
    digital_add_energy_pj: float = Field(ge=0, le=COST_MAX,
                                         description="one digital shift-and-add")
    link_energy_pj_per_byte: float = Field(ge=0, le=COST_MAX,
                                           description="moving one byte between cores")
    array_area_um2: float = Field(ge=0, le=COST_MAX,
                                  description="area of one array with its periphery")
    cell_write_energy_pj: float = Field(ge=0, le=COST_MAX,
                                        description="one programming pulse of one cell, its "
                                        "verify read included (write-verify: times the "
                                        "expected pulses)")
    cell_write_latency_ns: float = Field(
        default=100.0, ge=0, le=COST_MAX, description="one programming pulse of one cell with "
        "its verify read (absent in specs before issue 16: 100 ns)")


class TargetSpec(SpecRecord):
    """Everything neftc needs to know about a CIM chip."""

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)
    array: ArraySpec
    cell: CellSpec
    weight: WeightSpec
    periphery: PeripherySpec
    noise: NoiseSpec
    faults: FaultSpec = FaultSpec()
    effects: EffectsSpec = EffectsSpec()
    chip: ChipSpec
    cost: CostSpec
    sources: dict[str, str] = Field(
        default_factory=dict, description="dotted field path -> where the number comes from"
    )

    @property
    def slices(self) -> int:
        """Cells (bit slices) per weight column."""
        return encoding.n_slices(self.weight.bits, self.cell.bits)

    @property
    def polarities(self) -> int:
        """Columns per weight column: 2 for a differential pair, 1 for offset encoding."""
        return encoding.n_polarities(self.weight.sign_encoding)

    @property
    def qmax(self) -> int:
        """Largest integer weight magnitude the encoding can hold."""
        if self.weight.sign_encoding == "differential":
            return 2**self.weight.bits - 1
        return 2 ** (self.weight.bits - 1) - 1

    @property
    def qmin(self) -> int:
        """Smallest integer weight the encoding can hold."""
        if self.weight.sign_encoding == "differential":
            return -self.qmax
        return -(2 ** (self.weight.bits - 1))
