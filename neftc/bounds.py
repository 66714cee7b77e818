"""Bounds of the numbers a user gives on the command line or in settings, and their one check."""

from __future__ import annotations

import math
import numbers

from neftc.errors import NeftcError

# Bounds of the training options (and of the same flags elsewhere: --seed, --batch-size).
#: Seeds are non-negative 63-bit integers.
MAX_SEED = 2**63 - 1
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
#: Adam learning rates above this only diverge.
MAX_LR = 10.0
#: The paper's feedback strengths are 1e-3 .. 1e-1.
MAX_BETA = 100.0
MAX_IRS_TAPS = 1_000
#: NeFT's loss temperature (the paper's ovf/irs loss divides by N + 1 = 4); above this the
#: softmax is flat and the gradients vanish.
MAX_TEMPERATURE = 1_000.0
#: --neft auto's simulated chips per candidate.
MAX_AUTO_CHIPS = 1_000


def check_number(flag: str, value: object, low: float, high: float, *, integer: bool = False,
                 low_open: bool = False) -> None:
    """Raise ``NeftcError('--flag must be a finite number >= low and <= high, got value')``
    unless ``value`` is finite (an ``int`` with ``integer``) and in range."""
    try:
        if integer:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        else:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and math.isfinite(float(value))
        ok = ok and (value > low if low_open else value >= low) and value <= high  # type: ignore
    except (OverflowError, TypeError):
        ok = False
    if not ok:
        kind = "an integer" if integer else "a finite number"
        try:
            shown = repr(value)
        except ValueError:  # an integer too long to print
            shown = "a very large integer"
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise NeftcError(f"{flag} must be {kind} {'>' if low_open else '>='} {low:g} and <= "
                         f"{high if integer else format(high, 'g')}, got {shown}")


def check_beta(flag: str, value: object) -> None:
    """``--beta``: :func:`check_number` in [0, MAX_BETA], and a negative value refused with what
    0 means: the no-feedback control."""
    try:
        negative = isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and float(value) < 0
    except OverflowError:
        negative = False
    if negative:
        raise NeftcError(f"{flag} must be >= 0, got {value!r}: the loss already subtracts the "
                         f"feedback (a negative beta would add it); {flag} 0 is the "
                         "no-feedback control (the mode's loss without its feedback terms)")
    check_number(flag, value, 0, MAX_BETA)
