"""What Linux's /proc says about a server's processes: its children, its engine process, its RSS.

The soak (bench/soak.py) and the supervision tests find the engine process of a running
`xiaophi-serve` here, to kill it the way the OOM killer would, and read memory use.
"""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's list: a child belongs to the thread that
    forked it)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(set(found))


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def engine_pid(server_pid: int) -> int | None:
    """The engine process of the server `server_pid`: its spawned multiprocessing child (the
    other one, multiprocessing's resource tracker, is not spawned through `spawn_main`)."""
    for pid in children(server_pid):
        if "spawn_main" in command_line(pid):
            return pid
    return None


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of `pid` in MiB (VmRSS), None if it is gone."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
