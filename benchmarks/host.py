"""How busy the host was during a benchmark: the load average misses a VM's neighbours.

On a shared VM the hypervisor may give part of each vCPU's time to other guests ("steal" in
/proc/stat); the load average does not count that, so a run can look quiet (load < 1.5) and
still get a third of the CPU. Benchmarks record both.
"""

from __future__ import annotations

STEAL_LOADED = 0.10  # a run that lost more than this share of CPU time to other VMs is loaded


def cpu_ticks() -> list[int]:
    """The machine's CPU time counters (/proc/stat's cpu line; [] where there is none)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def steal_fraction(before: list[int], after: list[int]) -> float:
    """Share of all CPU time between two `cpu_ticks` readings that went to other VMs."""
    if len(before) < 8 or len(after) < 8:
        return 0.0
    total = sum(after[:8]) - sum(before[:8])
    return round((after[7] - before[7]) / total, 3) if total > 0 else 0.0
