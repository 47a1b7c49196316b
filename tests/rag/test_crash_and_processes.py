"""Processes: kill -9 in the middle of ingestion, and two processes writing one KB at once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.service import KnowledgeBaseService
from tests.rag.conftest import IDIOMS, settings

REPO = Path(__file__).resolve().parents[2]


def start_add(
    kb_dir: Path, files: list[Path], pause: str | None = None, database_url: str | None = None
) -> subprocess.Popen:
    """`xiaophi-kb add demo FILES` in a process of its own (postgres when given a database)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XIAOPHI_KB_CHUNK_SIZE": "60",
        "XIAOPHI_KB_CHUNK_OVERLAP": "10",
    }
    if database_url:
        env |= {"XIAOPHI_KB_BACKEND": "postgres", "XIAOPHI_KB_DATABASE_URL": database_url}
    # paused: the real CLI with a pause patched in at that point (tests/rag/paused_writer.py)
    launcher = ["-m", "tests.rag.paused_writer", pause, "rag"] if pause else ["-m", "rag"]
    cmd = [
        sys.executable,
        *launcher,
        "--kb-dir",
        str(kb_dir),
        "--embedding-model",
        "hashing",
        "add",
        "demo",
    ]
    return subprocess.Popen(
        cmd + [str(f) for f in files],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_pause(proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("XIAOPHI_KB_PAUSED"):
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"process ended before pausing: {proc.stderr.read()}")
    raise AssertionError("process did not reach its pause point")


def seed(service: KnowledgeBaseService, tmp_path: Path):
    service.create_kb("demo")
    from rag.models import Upload

    service.add_documents(
        "demo", [Upload(filename="old.txt", data=IDIOMS["守株待兔"].encode("gbk"))]
    )
    new_file = tmp_path / "new_gbk.txt"
    new_file.write_bytes(IDIOMS["画蛇添足"].encode("gbk"))
    return service, new_file


@pytest.fixture
def seeded(tmp_path):
    """A local KB `demo` holding old.txt, and new_gbk.txt to add."""
    return seed(KnowledgeBaseService(settings(tmp_path)), tmp_path)


@pytest.fixture
def seeded_any(tmp_path, make_settings):
    """The same, on each backend."""
    return seed(KnowledgeBaseService(make_settings()), tmp_path)


def writer(service, files: list[Path], pause: str | None = None) -> subprocess.Popen:
    s = service.settings
    url = s.database_url.get_secret_value() if s.backend == "postgres" else None
    return start_add(s.kb_dir, files, pause=pause, database_url=url)


def kill_9_while_adding(service, new_file, point: str) -> None:
    """A writer process adding `new_file`, killed with SIGKILL while paused at `point`."""
    proc = writer(service, [new_file], pause=f"{point}:60")
    try:
        wait_for_pause(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("point", ["after_embed", "mid_write", "before_commit"])
def test_kill_9_mid_ingestion_leaves_the_previous_state(seeded_any, point):
    service, new_file = seeded_any
    kill_9_while_adding(service, new_file, point)
    fresh = KnowledgeBaseService(service.settings)
    assert [d.filename for d in fresh.list_documents("demo")] == ["old.txt"]
    hits = fresh.search("demo", "守株待兔", top_k=5)
    assert hits[0].filename == "old.txt" and all(h.filename == "old.txt" for h in hits)
    # The dead writer's lock is gone with it; the next write lands and sweeps its leftovers.
    from rag.models import Upload

    result = fresh.add_documents(
        "demo", [Upload(filename="new_gbk.txt", data=new_file.read_bytes())]
    )
    assert result.results[0].status == "added"
    assert fresh.search("demo", "画蛇添足", top_k=1)[0].filename == "new_gbk.txt"
    counts = fresh.counts("demo")
    assert counts["documents"] == 2
    assert counts["chunks"] == counts["vectors"] == counts["lexical_rows"]
    if service.settings.backend == "local":
        leftovers = [
            p.name
            for p in (service.settings.kb_dir / "demo").iterdir()
            if p.name.startswith(".tmp-")
        ]
        assert leftovers == []


def test_two_processes_adding_at_once_both_land(seeded_any, tmp_path):
    service, new_file = seeded_any
    other = tmp_path / "other.txt"
    other.write_text(IDIOMS["亡羊补牢"], encoding="utf-16")
    # The first writer holds the KB lock for 2 s just before publishing; the second must wait
    # for it and build on its result instead of overwriting it.
    first = writer(service, [new_file], pause="before_commit:2")
    wait_for_pause(first)
    second = writer(service, [other])
    assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0, second.stderr.read()
    names = sorted(
        d.filename for d in KnowledgeBaseService(service.settings).list_documents("demo")
    )
    assert names == ["new_gbk.txt", "old.txt", "other.txt"]


def kb_leftovers(kb: Path) -> list[str]:
    """What a killed writer leaves: temporaries, versions CURRENT never named, unlisted originals."""
    current = (kb / "CURRENT").read_text()
    listed = {
        f"{d['id']}{d['extension']}"
        for d in json.loads((kb / current / "manifest.json").read_text())["documents"]
    }
    return sorted(
        [
            p.name
            for p in kb.iterdir()
            if p.name.startswith(".tmp-")
            or (re.fullmatch(r"v\d{6,}", p.name) and int(p.name[1:]) > int(current[1:]))
        ]
        + [f"files/{p.name}" for p in (kb / "files").iterdir() if p.name not in listed]
    )


@pytest.mark.parametrize("point", ["mid_write", "before_commit"])
def test_opening_a_kb_removes_what_a_writer_killed_mid_commit_left(seeded, point):
    service, new_file = seeded
    kb = service.settings.kb_dir / "demo"
    old = service.list_documents("demo")[0]
    old_bytes = (kb / "files" / f"{old.id}.txt").read_bytes()
    kill_9_while_adding(service, new_file, point)
    left = kb_leftovers(kb)
    # The kill left a version being built (.tmp-*, or renamed but never made current) and the
    # new file's original, which no manifest CURRENT names lists.
    assert any(not name.startswith("files/") for name in left), left
    assert any(name.startswith("files/") for name in left), left
    fresh = KnowledgeBaseService(service.settings)
    assert [d.filename for d in fresh.list_documents("demo")] == ["old.txt"]
    assert kb_leftovers(kb) == []
    assert fresh.search("demo", "守株待兔", top_k=1)[0].filename == "old.txt"
    assert (kb / "files" / f"{old.id}.txt").read_bytes() == old_bytes
    assert hashlib.sha256(old_bytes).hexdigest() == old.sha256


def test_opening_a_kb_leaves_a_live_writer_alone(seeded):
    service, new_file = seeded
    kb = service.settings.kb_dir / "demo"
    # This writer holds the KB lock with its half-built version on disk for 3 s.
    writer = start_add(service.settings.kb_dir, [new_file], pause="mid_write:3")
    wait_for_pause(writer)
    building = kb_leftovers(kb)
    assert building
    start = time.monotonic()
    assert [d.filename for d in KnowledgeBaseService(service.settings).list_documents("demo")] == [
        "old.txt"
    ]
    assert time.monotonic() - start < 1.5  # did not wait for the writer's lock
    assert kb_leftovers(kb) == building
    assert writer.wait(timeout=60) == 0, writer.stderr.read()
    names = [d.filename for d in KnowledgeBaseService(service.settings).list_documents("demo")]
    assert names == ["old.txt", "new_gbk.txt"]
    assert kb_leftovers(kb) == []
