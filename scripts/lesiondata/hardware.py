"""What machine a benchmark ran on, in the words its records use."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), e.g. ``AMD EPYC`` or ``Intel(R) Xeon(R) Processor``; elsewhere what
    :mod:`platform` knows. Records keep it because ratios such as bf16 against fp32 differ between CPU models."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()
