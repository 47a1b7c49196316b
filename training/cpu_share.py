"""Torch threads for the cores other programs leave free, on a CPU shared with them.

Torch starts one thread per core. When another program keeps a core busy, every parallel op of
a training step waits at its barrier for the thread the kernel has just taken off its core: on
the 2-core dev VM with one busy process beside it, tiny pretraining ran at 2.6k tokens/s on two
threads and 5.1k on one (8.6k on two when idle), with the same losses, which do not depend on
the thread count here. So each stage starts with the threads the free cores allow, and a
Trainer stage looks again every `CHECK_EVERY_STEPS` steps (other programs come and go).
Linux only (/proc/stat); elsewhere, and when the user chose OMP_NUM_THREADS, nothing changes.
"""

from __future__ import annotations

import os
import time

import torch
from transformers import TrainerCallback

CHECK_EVERY_STEPS = 50
SAMPLE_S = 0.5


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_jiffies() -> float:
    times = os.times()  # this process and its threads (children excluded)
    return (times.user + times.system) * os.sysconf("SC_CLK_TCK")


class CpuShare:
    """Measures how many cores other programs keep busy, between two looks."""

    def __init__(self) -> None:
        self.cores = len(os.sched_getaffinity(0))
        self._last = self._look()

    def _look(self) -> tuple[float, float, float] | None:
        times = _cpu_times()
        return None if times is None else (*times, _own_jiffies())

    def others_busy(self) -> float | None:
        """Cores' worth of CPU the rest of the machine used since the last look."""
        now = self._look()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        machine_cores = os.cpu_count() or self.cores
        busy = (now[0] - last[0]) - (now[2] - last[2])  # everyone's busy time less our own
        return max(0.0, busy / (now[1] - last[1]) * machine_cores)

    def threads(self) -> int | None:
        others = self.others_busy()
        if others is None:
            return None
        return max(1, min(self.cores, round(self.cores - others)))


def managed() -> bool:
    """Whether to choose threads at all: a CPU run the user left the threads of to torch."""
    return (
        "OMP_NUM_THREADS" not in os.environ
        and not torch.cuda.is_available()
        and os.path.exists("/proc/stat")
    )


def set_threads_for_free_cores(sample_s: float = SAMPLE_S) -> int:
    """At a stage's start: look at the machine for `sample_s`, set and return torch's threads."""
    if managed():
        share = CpuShare()
        time.sleep(sample_s)
        threads = share.threads()
        if threads is not None:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


class CpuShareCallback(TrainerCallback):
    """Looks again every `CHECK_EVERY_STEPS` steps and follows the free cores, in the training
    loop's own thread (where torch's thread pool is used)."""

    def __init__(self) -> None:
        self.share = CpuShare()
        self.threads_seen: set[int] = {torch.get_num_threads()}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % CHECK_EVERY_STEPS == 0:
            threads = self.share.threads()
            if threads is not None and threads != torch.get_num_threads():
                torch.set_num_threads(threads)
                self.threads_seen.add(threads)
        return control
