"""Threads for the free cores: another program's busy core is seen, this process's own work is
not taken for another program's, and a stage then starts with the threads that are left."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from training import cpu_share

pytestmark = pytest.mark.skipif(not cpu_share.managed(), reason="needs Linux /proc/stat, CPU")


@pytest.fixture
def busy_program():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_another_programs_busy_core_is_seen(busy_program):
    share = cpu_share.CpuShare()
    time.sleep(1.0)
    assert share.others_busy() >= 0.6


def test_this_processs_own_work_is_not_another_programs():
    share = cpu_share.CpuShare()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # one core busy, in this process
        pass
    assert share.others_busy() < 0.5


def test_a_stage_starts_with_the_threads_the_free_cores_allow(busy_program, restore_threads):
    cores = cpu_share.CpuShare().cores
    assert cpu_share.set_threads_for_free_cores(sample_s=1.0) == max(1, cores - 1)
