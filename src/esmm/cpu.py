"""How many cores are free, and how torch's OpenMP threads should wait.

Imported by ``esmm/__init__`` before anything imports torch, so it must not
import torch itself: libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads.

Why it matters (batch-1024 ESMM training, 2-core VM, bf16, rows/s):

==========================  ===========  ==================
threads, wait policy        quiet        one other busy job
==========================  ===========  ==================
2, spinning (libgomp's)     126k-145k    13k-37k
2, sleeping (PASSIVE)       59k-62k      90k-99k
1                           120k         112k
==========================  ===========  ==================

A waiting thread that spins catches the next of a step's many small parallel
regions at once, but steals the core from a descheduled peer when another
process competes for it; a sleeping thread costs a wake-up (a VM exit on a
virtual machine) per region. So: spin where every thread gets a core of its
own, otherwise sleep and use only the free cores.
"""

from __future__ import annotations

import os
import sys
import time

#: Sampling window of :func:`idle_cores`: long enough to see a busy process, short
#: enough not to be felt at start-up.
SAMPLE_SECONDS = 0.05

#: What :func:`choose_wait_policy` decided at import ("environment": the user's own).
decision: dict[str, object] = {}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(idle + iowait ticks, all ticks) over every core, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return ticks[3] + ticks[4], sum(ticks)


def idle_cores(sample_seconds: float = SAMPLE_SECONDS) -> float:
    """Cores idle over a short sample (machine-wide); every usable core where unknown."""
    before = _cpu_times()
    if before is None:
        return float(usable_cores())
    time.sleep(sample_seconds)
    after = _cpu_times()
    total = after[1] - before[1] if after else 0
    if not after or total <= 0:  # clock ticks too coarse for the window: assume idle
        return float(usable_cores())
    share = (after[0] - before[0]) / total
    return min(float(usable_cores()), share * (os.cpu_count() or 1))


def free_threads() -> int:
    """Threads to train with when the user gave none: the cores idle right now (>= 1)."""
    return max(1, min(usable_cores(), int(idle_cores() + 0.5)))


def choose_wait_policy() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless every usable core is idle (then leave
    libgomp's spinning default). A value the user set wins; too late once torch is loaded."""
    if "OMP_WAIT_POLICY" in os.environ:
        decision.update(policy=os.environ["OMP_WAIT_POLICY"], by="environment")
        return
    if "torch" in sys.modules:
        decision.update(policy="unchanged", by="torch was imported before esmm")
        return
    idle, usable = idle_cores(), usable_cores()
    if idle < usable - 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        decision.update(policy="PASSIVE", by=f"{idle:.1f} of {usable} cores idle")
    else:
        decision.update(policy="default (spin, then sleep)", by=f"{idle:.1f} of {usable} cores idle")
