"""Threads for the free cores: another program's busy core is seen, this process's own work is
not taken for another program's, and a stage then starts with the threads that are left."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from training import cpu_share

pytestmark = pytest.mark.skipif(not cpu_share.managed(), reason="needs Linux /proc/stat, CPU")


@pytest.fixture
def busy_program():
    """A program keeping one core busy, from the moment it says so (a Python start can take
    longer than any fixed wait on a loaded machine)."""
    spin = "import sys; print('spinning', flush=True)\nwhile True: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "spinning"
    yield proc
    proc.kill()
    proc.wait()


def test_another_programs_busy_core_is_seen(busy_program):
    share = cpu_share.CpuShare()
    time.sleep(1.0)
    assert share.others_busy() >= 0.6


def test_this_processs_own_work_is_not_another_programs():
    """A core's worth of this process's own work adds nothing to what other programs are seen
    using — measured against the same look while it rests, so a machine that others keep busy
    (CI, a developer's other jobs) does not read as this process's doing."""
    share = cpu_share.CpuShare()
    time.sleep(1.0)
    resting = share.others_busy()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # one core busy, in this process
        pass
    working = share.others_busy()
    assert working < resting + 0.5, (resting, working)


def test_a_stage_starts_with_the_threads_the_free_cores_allow(busy_program):
    """In a fresh process, as a stage starts: threads that an earlier test left running in
    this one would compete with the busy program and leave it less than its core."""
    cores = cpu_share.CpuShare().cores
    look = "from training import cpu_share; print(cpu_share.set_threads_for_free_cores(1.0))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", look], capture_output=True, text=True, env=env, check=True
    )
    assert int(out.stdout.split()[-1]) == max(1, cores - 1)
