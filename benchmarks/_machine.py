"""Machine-load helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
from pathlib import Path


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine have used (user, nice, system, irq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
