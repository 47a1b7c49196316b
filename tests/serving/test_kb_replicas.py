"""Several api servers on one PostgreSQL: what one writes the others read at once, concurrent
uploads all land, a server killed mid-upload leaves the KB whole, and a database that restarts
under a running server costs 503s meanwhile and nothing after."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_database
from tests.rag.conftest import IDIOMS
from tests.serving.conftest import free_port, kb_test_settings, run_server, tiny_settings
from tests.serving.kb_helpers import kb_state, new_kb, search, upload
from tests.serving.test_errors import assert_error
from tools.scratch_postgres import ScratchPostgres

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Replica:
    """`xiaophi-serve` in a process of its own (no model: the KB routes need none)."""

    proc: subprocess.Popen
    base_url: str
    lines: queue.Queue

    def wait_for_line(self, prefix: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "the server exited"
                continue
            if line.startswith(prefix):
                return
        raise AssertionError(f"no line starting {prefix!r}")


def start_replica(database_url: str, tmp: Path, pause: str | None = None, **env: str) -> Replica:
    """`pause` ("point:seconds"): the real server with a pause patched in at that point of its
    KB writes (tests/rag/paused_writer.py)."""
    port = free_port()
    environ = {
        **{k: v for k, v in os.environ.items() if k != "XIAOPHI_MODEL"},
        "PYTHONPATH": str(REPO),
        "XIAOPHI_UI": "false",
        "XIAOPHI_KB_DIR": str(tmp / f"kb-{port}"),  # unused by postgres; must not be shared
        "XIAOPHI_KB_BACKEND": "postgres",
        "XIAOPHI_KB_DATABASE_URL": database_url,
        "XIAOPHI_KB_EMBEDDING_MODEL": "hashing",
        "XIAOPHI_KB_CHUNK_SIZE": "60",
        "XIAOPHI_KB_CHUNK_OVERLAP": "10",
        **env,
    }
    launcher = ["-m", "tests.rag.paused_writer", pause, "serving"] if pause else ["-m", "serving"]
    proc = subprocess.Popen(
        [sys.executable, *launcher, "--port", str(port), "--log-level", "warning"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    replica = Replica(proc, f"http://127.0.0.1:{port}/v1", lines)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{replica.base_url}/knowledge_bases", timeout=2).status_code == 200:
                return replica
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "xiaophi-serve exited: " + "".join(list(lines.queue))
        assert time.monotonic() < deadline, "xiaophi-serve did not come up"
        time.sleep(0.3)


def stop(replica: Replica) -> None:
    if replica.proc.poll() is None:
        replica.proc.send_signal(signal.SIGTERM)
        try:
            replica.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            replica.proc.kill()


@contextlib.contextmanager
def replicas(database_url: str, tmp: Path, n: int) -> Iterator[list[Replica]]:
    started = []
    try:
        for _ in range(n):
            started.append(start_replica(database_url, tmp))
        yield started
    finally:
        for r in started:
            stop(r)


def texts(prefix: str, n: int) -> list[tuple[str, bytes]]:
    words = list(IDIOMS)
    return [
        (f"{prefix}{i}.txt", f"{prefix}第{i}篇：{IDIOMS[words[i % 4]]}".encode()) for i in range(n)
    ]


@pytest.mark.slow
def test_two_servers_on_one_database_see_each_others_writes(postgres_server, tmp_path):
    url = fresh_database(postgres_server)
    with replicas(url, tmp_path, 2) as (a, b):
        kb = new_kb(a)
        added = upload(a, kb, ("守株待兔.txt", IDIOMS["守株待兔"].encode())).json()
        doc_id = added["results"][0]["document"]["id"]
        # through the other server, at once: no cache to expire, no file to sync
        assert search(b, kb, "守株待兔", top_k=1).json()["data"][0]["document_id"] == doc_id
        assert httpx.delete(f"{b.base_url}/knowledge_bases/{kb}/documents/{doc_id}").json()[
            "deleted"
        ]
        assert search(a, kb, "守株待兔", top_k=5).json()["data"] == []

        # both servers upload to the KB at once, several requests each
        errors: list[str] = []

        def send(server: Replica, prefix: str) -> None:
            for files in (texts(prefix, 4)[:2], texts(prefix, 4)[2:]):
                response = upload(server, kb, *files)
                if response.status_code != 200 or any(
                    r["status"] != "added" for r in response.json()["results"]
                ):
                    errors.append(response.text)

        threads = [threading.Thread(target=send, args=x) for x in ((a, "甲"), (b, "乙"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        info_a, docs_a = kb_state(a, kb)
        info_b, docs_b = kb_state(b, kb)
        assert (info_a, docs_a) == (info_b, docs_b)
        assert sorted(d["filename"] for d in docs_a) == sorted(
            [f"甲{i}.txt" for i in range(4)] + [f"乙{i}.txt" for i in range(4)]
        )
        assert info_a["chunks"] == sum(d["chunks"] for d in docs_a)
        # a KB deleted through one server is gone in the other
        assert httpx.delete(f"{a.base_url}/knowledge_bases/{kb}").status_code == 200
        assert_error(
            httpx.get(f"{b.base_url}/knowledge_bases/{kb}/documents"), 404, "not_found_error"
        )


@pytest.mark.slow
def test_a_server_killed_mid_upload_leaves_the_kb_whole(postgres_server, tmp_path):
    url = fresh_database(postgres_server)
    with replicas(url, tmp_path, 1) as (b,):
        kb = new_kb(b)
        upload(b, kb, ("old.txt", IDIOMS["守株待兔"].encode()))
        before = kb_state(b, kb)
        # this server stops inside its upload transaction (chunks written, postings not)
        a = start_replica(url, tmp_path, pause="mid_write:60")
        try:

            def send() -> None:
                with contextlib.suppress(httpx.TransportError):  # its server dies under it
                    upload(a, kb, *texts("新", 2))

            sent = threading.Thread(target=send, daemon=True)
            sent.start()
            a.wait_for_line("XIAOPHI_KB_PAUSED mid_write")
            os.kill(a.proc.pid, signal.SIGKILL)
            a.proc.wait(timeout=10)
        finally:
            stop(a)
        assert kb_state(b, kb) == before
        # the dead server's lock went with its connection: the same upload lands through b
        response = upload(b, kb, *texts("新", 2))
        assert [r["status"] for r in response.json()["results"]] == ["added", "added"]
        info, docs = kb_state(b, kb)
        assert info["chunks"] == sum(d["chunks"] for d in docs) and len(docs) == 3
        # and a restarted server sees exactly that
        with replicas(url, tmp_path, 1) as (again,):
            assert kb_state(again, kb) == (info, docs)
            assert search(again, kb, "新第1篇", top_k=1).json()["data"][0]["filename"] == "新1.txt"


def test_database_restart_under_a_running_server(tiny_checkpoint, tmp_path):
    """KB routes 503 (saying why) while the database is down, /health and chat without a KB
    unaffected; the same server works again once the database is back."""
    db = ScratchPostgres(tmp_path / "pg").start()
    try:
        kb_settings = kb_test_settings(
            tmp_path / "kb", backend="postgres", database_url=db.url, database_timeout_s=1
        )
        settings = tiny_settings(tiny_checkpoint, kb_dir=tmp_path / "kb")
        with run_server(settings, kb_settings=kb_settings) as server:
            kb = new_kb(server)
            upload(server, kb, ("守株待兔.txt", IDIOMS["守株待兔"].encode()))
            health = httpx.get(f"{server.url}/health").json()
            assert health["knowledge_bases"] == {"backend": "postgres", "status": "ok"}
            db.kill()
            down = search(server, kb, "守株待兔")
            assert_error(down, 503, "service_unavailable_error", code="kb_unavailable")
            assert "database at 127.0.0.1" in down.json()["error"]["message"]
            assert down.headers["retry-after"] == "1"
            health = httpx.get(f"{server.url}/health", timeout=10)
            assert health.status_code == 200
            assert health.json()["knowledge_bases"]["status"] == "unavailable"
            chat = httpx.post(
                f"{server.base_url}/chat/completions",
                json={
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "你好"}],
                    "max_tokens": 4,
                },
                timeout=60,
            )
            assert chat.status_code == 200 and chat.json()["choices"][0]["message"]
            db.start()
            db.wait_ready()
            deadline = time.monotonic() + 20
            while search(server, kb, "守株待兔").status_code == 503:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            hits = search(server, kb, "守株待兔", top_k=1).json()["data"]
            assert hits[0]["filename"] == "守株待兔.txt"
            assert httpx.get(f"{server.url}/health").json()["knowledge_bases"]["status"] == "ok"
    finally:
        db.remove()
