"""`make soak`: a real server under mixed load while its engine process is killed twice (and,
with `--backend postgres`, its knowledge-base database restarted once), for a bounded time.

Starts `python -m serving` on a free port of 127.0.0.1 (all traffic stays there) with a
knowledge base of its own, in a scratch folder, and a model: `--model DIR`, else `--run`'s `dpo`
checkpoint (and its embedder) when that run exists, else a random-weight checkpoint of the tiny
recipe's size built here (bench/bench_model.py) with the built-in `hashing` embedder. For
`--duration` seconds clients stream chat (a third of them hang up mid-answer), ask RAG chat
questions and upload and delete documents (bench/soak_clients.py); at 30 % and 70 % of the run
the engine process gets SIGKILL (what the OOM killer sends), at 50 % the PostgreSQL is killed
and started again. Then: every document whose upload said "added" and that was not deleted must
still be listed and found by a search for its own word; the server must stop on SIGINT with
exit code 0 and a log free of tracebacks.

Prints requests ok / failed-retryable / failed per kind, documents lost, how long each kill
took to heal, and the RSS of the server and its engine process at the start and at the end.
Exits 1 if a document was lost, a request failed other than retryably, or the server did not
heal or stop cleanly.

    python -m bench.soak [--duration 300] [--backend local|postgres] [--model DIR | --run DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.bench_model import BENCH_TEXTS, build_checkpoint
from bench.procfs import engine_pid, rss_mib
from bench.soak_clients import KINDS, Load

MODEL = "soak"
KB = "soak"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pick_model(args, work: Path) -> tuple[Path, str, str]:
    """(checkpoint, embedder, what it is)."""
    run = Path(args.run) if args.run else None
    if args.model:
        return Path(args.model), args.embedder or "hashing", str(args.model)
    if run is not None and (run / "dpo" / "config.json").is_file():
        embedder = args.embedder or (
            str(run / "embedder") if (run / "embedder" / "modules.json").is_file() else "hashing"
        )
        return run / "dpo", embedder, f"{run / 'dpo'} (trained)"
    model = build_checkpoint(work / "model", "tiny")
    return model, args.embedder or "hashing", "random-weight tiny-recipe Phi (built here)"


class Server:
    """`python -m serving` in a session of its own (so SIGINT reaches it as Ctrl-C would)."""

    def __init__(self, model: Path, embedder: str, work: Path, database_url: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "server.log"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "XIAOPHI_UI": "false",
            "XIAOPHI_KB_EMBEDDING_MODEL": embedder,
        }
        if database_url:
            env |= {"XIAOPHI_KB_BACKEND": "postgres", "XIAOPHI_KB_DATABASE_URL": database_url}
        command = [sys.executable, "-m", "serving", "--model", str(model), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--served-model-name", MODEL]
        command += ["--kb-dir", str(work / "kb"), "--log-level", "warning"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_healthy(self, timeout: float) -> float | None:
        """Seconds until /health says 200, or None (timeout, or the server exited)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout and self.process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.1)
        return None

    def memory(self) -> dict:
        return {
            "server": rss_mib(self.process.pid),
            "engine": rss_mib(engine_pid(self.process.pid)),
        }

    def stop(self) -> int:
        """SIGINT to its process group, as Ctrl-C sends it; its exit code."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


async def kill_engine(server: Server) -> dict:
    """SIGKILL the engine process, then time until a new one runs and /health is 200."""
    pid = engine_pid(server.process.pid)
    if pid is None:
        return {"error": "no engine process found", "healed_s": None}
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    healed = None
    while time.monotonic() - killed < 120 and server.process.poll() is None:
        # right after the kill /health may still say 200: the server has not noticed yet
        replaced = engine_pid(server.process.pid) not in (None, pid)
        if replaced and await asyncio.to_thread(server.wait_healthy, 0.5) is not None:
            healed = round(time.monotonic() - killed, 2)
            break
        await asyncio.sleep(0.1)
    return {"killed_pid": pid, "new_pid": engine_pid(server.process.pid), "healed_s": healed}


async def restart_database(postgres) -> dict:
    started = time.monotonic()
    await asyncio.to_thread(postgres.kill)  # immediate: connections cut, no checkpoint
    await asyncio.sleep(3)
    await asyncio.to_thread(postgres.start)
    return {"down_s": round(time.monotonic() - started, 1)}


async def run_load(server: Server, args, postgres) -> dict:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        r = await client.post(f"{server.url}/v1/knowledge_bases", json={"name": KB})
        assert r.status_code in (201, 409), r.text
        seed = [
            ("files", (f"seed{i}.txt", "".join(BENCH_TEXTS[i:] + BENCH_TEXTS[:i]).encode()))
            for i in range(4)
        ]
        r = await client.post(f"{server.url}/v1/knowledge_bases/{KB}/documents", files=seed)
        assert r.status_code == 200, r.text
        memory_start = server.memory()

        stop = asyncio.Event()
        load = Load(client, server.url, MODEL, KB, stop)
        workers = [load.chat_streams(i) for i in range(args.streams)]
        workers += [load.rag_chats(i) for i in range(args.rag)]
        workers.append(load.documents(tag=f"{os.getpid()}"))
        tasks = [asyncio.create_task(w) for w in workers]
        started = time.monotonic()
        events = []

        async def at(fraction: float, what: str, action) -> None:
            await asyncio.sleep(max(0.0, started + fraction * args.duration - time.monotonic()))
            at_s = round(time.monotonic() - started)
            events.append({"what": what, "at_s": at_s, **(await action)})

        plan = [at(0.3, "engine killed", kill_engine(server))]
        if postgres is not None:
            plan.append(at(0.5, "database restarted", restart_database(postgres)))
        plan.append(at(0.7, "engine killed", kill_engine(server)))
        await asyncio.gather(*plan)
        await asyncio.sleep(max(0.0, started + args.duration - time.monotonic()))
        stop.set()
        await asyncio.gather(*tasks)

        healthy = await asyncio.to_thread(server.wait_healthy, 60) is not None
        for _ in range(len(load.docs.pending_deletes) * 3):  # finish deletes refused meanwhile
            if not load.docs.pending_deletes:
                break
            await load.delete(load.docs.pending_deletes.popleft())
        check = await check_documents(client, server.url, load.docs.expected())
        metrics = (await client.get(f"{server.url}/metrics")).text
        restarts = next(
            (float(line.split()[1]) for line in metrics.splitlines()
             if line.startswith("xiaophi_engine_restarts_total ")),
            None,
        )  # fmt: skip
        return {
            "tally": load.tally,
            "documents": {
                "added": len(load.docs.added),
                "deleted": len(load.docs.deleted),
                "in_doubt": len(load.docs.in_doubt),
                **check,
            },
            "events": sorted(events, key=lambda e: e["at_s"]),
            "healthy_at_end": healthy,
            "restarts_metric": restarts,
            "memory": {"start": memory_start, "end": server.memory()},
        }


async def check_documents(client: httpx.AsyncClient, url: str, expected: dict[str, str]) -> dict:
    """Each expected document: listed, and found by a search for its own word."""
    listing = await client.get(f"{url}/v1/knowledge_bases/{KB}/documents")
    listed = {d["id"] for d in listing.json()["data"]}
    found = set()
    for doc, marker in expected.items():
        r = await client.post(
            f"{url}/v1/knowledge_bases/{KB}/search", json={"query": marker, "top_k": 5}
        )
        if r.status_code == 200 and doc in {hit["document_id"] for hit in r.json()["data"]}:
            found.add(doc)
    kept = {doc for doc in expected if doc in listed and doc in found}
    return {
        "expected": len(expected),
        "listed": len(set(expected) & listed),
        "searchable": len(found),
        "lost": len(expected) - len(kept),
    }


def report(result: dict, args, model_note: str, stop_code: int, log_ok: bool) -> str:
    tally = result["tally"]
    lines = [
        f"soak: {args.duration} s, backend {args.backend}, {args.streams} streaming + {args.rag} "
        f"RAG clients + 1 document writer; model {model_note}",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        f"{'requests':<14}{'ok':>7}{'retryable':>11}{'failed':>8}",
    ]
    for kind in KINDS:
        lines.append(
            f"{kind:<14}{tally.ok[kind]:>7}{tally.retryable[kind]:>11}{tally.failed[kind]:>8}"
        )
    totals = [sum(c.values()) for c in (tally.ok, tally.retryable, tally.failed)]
    lines.append(f"{'total':<14}{totals[0]:>7}{totals[1]:>11}{totals[2]:>8}")
    lines.append(f"(ok includes {tally.hung_up} streams the client left mid-answer on purpose)")
    d = result["documents"]
    lines += [
        "",
        f"documents: added {d['added']}, deleted {d['deleted']}, in doubt {d['in_doubt']}, "
        f"expected {d['expected']}, listed {d['listed']}, searchable {d['searchable']}, "
        f"LOST {d['lost']}",
    ]
    for e in result["events"]:
        detail = {k: v for k, v in e.items() if k not in ("what", "at_s")}
        lines.append(f"at {e['at_s']:>4} s: {e['what']}: {json.dumps(detail)}")
    mem = result["memory"]

    def mib(value) -> str:
        return f"{value:.0f}" if value is not None else "-"

    lines += [
        f"RSS MiB: server {mib(mem['start']['server'])} → {mib(mem['end']['server'])}, "
        f"engine process {mib(mem['start']['engine'])} → {mib(mem['end']['engine'])} "
        "(a new process after each kill)",
        f"xiaophi_engine_restarts_total: {result['restarts_metric']}; healthy at the end: "
        f"{result['healthy_at_end']}; SIGINT stop: exit {stop_code}, log "
        + ("clean" if log_ok else "has a traceback or a leak warning"),
    ]
    for failure in tally.failures:
        lines.append(f"  failed: {failure}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=300, help="seconds of load (default 300)")
    parser.add_argument("--backend", choices=["local", "postgres"], default="local")
    parser.add_argument("--model", help="checkpoint folder to serve")
    parser.add_argument("--run", help="a training run folder: serves its dpo checkpoint")
    parser.add_argument("--embedder", help="KB embedder (default: the run's, else hashing)")
    parser.add_argument("--streams", type=int, default=4, help="streaming chat clients")
    parser.add_argument("--rag", type=int, default=2, help="RAG chat clients")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its log)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="xiaophi-soak-"))
    postgres = server = None
    try:
        model, embedder, note = pick_model(args, work)
        database_url = None
        if args.backend == "postgres":
            from tools.scratch_postgres import ScratchPostgres

            postgres = ScratchPostgres(work / "postgres").start()
            database_url = postgres.url
        server = Server(model, embedder, work, database_url)
        if server.wait_healthy(300) is None:
            print(server.log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise SystemExit("the server did not become healthy")
        result = asyncio.run(run_load(server, args, postgres))
        stop_code = server.stop()
        log = server.log.read_text(errors="replace")
        log_ok = "Traceback" not in log and "leaked" not in log
    finally:
        if server is not None:
            server.stop()
        if postgres is not None:
            postgres.remove()
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(result, args, note, stop_code, log_ok))
    tally, docs = result["tally"], result["documents"]
    healed = all(e.get("healed_s") is not None for e in result["events"] if "healed_s" in e)
    good = (
        docs["lost"] == 0
        and not sum(tally.failed.values())
        and healed
        and result["healthy_at_end"]
        and stop_code == 0
        and log_ok
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
