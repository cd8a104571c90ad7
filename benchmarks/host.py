"""How busy the host was during a benchmark, counting only what is not the benchmark's own.

Two things take CPU from a benchmark on a shared VM, and the load average shows neither well:
- other VMs: the hypervisor gives part of each vCPU's time to other guests ("steal" in
  /proc/stat), which the load average does not count at all;
- other processes on this VM: the load average counts them, but also the benchmark's own
  threads (8 pipelines of 2 threads make a load of 4 on a quiet host).
So `HostMeter` reads /proc/stat's counters and the benchmark process's own CPU time (its
threads and its finished child processes) at the start and at the end; a run where other VMs
or other processes took more than a tenth of the machine's CPU time is labelled loaded.
"""

from __future__ import annotations

import os
import resource
from dataclasses import asdict, dataclass

STEAL_LOADED = 0.10  # a run that lost more than this share of CPU time to other VMs is loaded
OTHERS_LOADED = 0.10  # ... or where other processes on this VM used more than this share


def cpu_ticks() -> list[int]:
    """The machine's CPU time counters (/proc/stat's cpu line; [] where there is none)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def own_cpu_seconds() -> float:
    """CPU time of this process's threads and of its children that have been waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class HostShare:
    """Shares of the machine's CPU time over a run (0-1)."""

    steal: float  # taken by other VMs
    others: float  # used by processes other than the benchmark and its children
    own: float  # used by the benchmark

    @property
    def loaded(self) -> bool:
        return self.steal > STEAL_LOADED or self.others > OTHERS_LOADED

    def to_dict(self) -> dict:
        return {**asdict(self), "loaded": self.loaded, "steal_loaded_above": STEAL_LOADED,
                "others_loaded_above": OTHERS_LOADED}  # fmt: skip

    def describe(self) -> str:
        return (f"other VMs took {self.steal:.0%} of the CPU time (steal), other processes "
                f"{self.others:.0%}, the benchmark {self.own:.0%}")


class HostMeter:
    """Created at the start of a run; `share()` covers the time since."""

    def __init__(self) -> None:
        self._ticks = cpu_ticks()
        self._own = own_cpu_seconds()

    def share(self) -> HostShare:
        after, own = cpu_ticks(), own_cpu_seconds() - self._own
        if len(self._ticks) < 8 or len(after) < 8:
            return HostShare(0.0, 0.0, 0.0)
        delta = [a - b for a, b in zip(after[:8], self._ticks[:8])]
        total = sum(delta)
        if total <= 0:
            return HostShare(0.0, 0.0, 0.0)
        busy = delta[0] + delta[1] + delta[2] + delta[5] + delta[6]  # user nice system irq softirq
        own_ticks = own * os.sysconf("SC_CLK_TCK")
        return HostShare(steal=round(delta[7] / total, 3),
                         others=round(max(0.0, busy - own_ticks) / total, 3),
                         own=round(min(own_ticks, busy) / total, 3))  # fmt: skip
