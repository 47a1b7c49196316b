"""`xiaophi-demo` (what `make demo` runs): from a fresh clone to a served page.

Builds the demo corpora (once; the build's output goes to `data/demo/build.log`), runs the tiny
pipeline (finished stages are skipped; a line per stage on the console, each stage's output in
`runs/tiny/logs/`), starts `xiaophi-serve` with the UI as soon as the chat model is trained and
fills the `demo` knowledge base from packaged documents (duplicates are recognised) as soon as the
embedder is, while the last stages run; once the pipeline is done and the server healthy it prints
the URL, a curl call and an openai snippet. Ctrl-C stops the server. `--verbose` shows
everything the build and the stages print instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from training.data.demo import TOOLS_FILE, build_status
from training.stage_dirs import is_finished

BIN = Path(sys.executable).parent
MODEL_NAME = "xiaophi-tiny"
INTERRUPTED = "xiaophi-demo: interrupted; run it again to go on where it stopped."


def step(title: str, started: float) -> None:
    print(f"\n==> [{time.time() - started:5.1f}s] {title}", flush=True)


def run(*args: str, log: Path | None = None) -> None:
    """Run one of our console scripts; with `log`, its output goes to that file (appended), and
    a failure shows the file's last lines and its path."""
    command = [str(BIN / args[0]), *args[1:]]
    if log is None:
        result = subprocess.run(command)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        if log is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
            print("\n".join(tail), file=sys.stderr)
        where = f"; its full output is in {log}" if log is not None else " (its output is above)"
        raise SystemExit(
            f"xiaophi-demo: `{' '.join(args[:3])} …` failed with exit code {result.returncode}{where}"
        )


def corpus_line(data: Path, log: Path) -> str:
    """One line about the corpora just built, from their summary.json (the table is in `log`)."""
    summary = json.loads((data / "summary.json").read_text(encoding="utf-8"))
    files = summary.get("files", {})
    records = sum(f.get("records", 0) for f in files.values())
    chars = sum(f.get("characters", 0) for f in files.values())
    return (
        f"    {len(files)} files, {records:,} records, {chars / 1e6:.1f}M characters in {data} "
        f"(built in {summary.get('build_seconds', '?')} s; per-source table: {log})"
    )


def fill_demo_kb(kb_dir: Path, embedder: Path, docs: Path, name: str = "demo") -> list[str]:
    """Create (once) and fill the demo knowledge base; returns one line per file for the console."""
    from rag.config import KBSettings
    from rag.errors import Conflict
    from rag.models import Upload
    from rag.service import KnowledgeBaseService

    lines = []
    service = KnowledgeBaseService(KBSettings(kb_dir=kb_dir, embedding_model=str(embedder)))
    with contextlib.suppress(Conflict):  # already there from an earlier `make demo`
        service.create_kb(name)
    info = service.get_kb(name)
    if info.documents and info.embedding_model != service.embedder.model_id:
        lines.append(
            f"  the demo KB was indexed with another embedder: reindexed ({info.chunks} chunks)"
        )
        service.reindex(name)
    uploads = [
        Upload(filename=p.name, data=p.read_bytes()) for p in sorted(docs.iterdir()) if p.is_file()
    ]
    for result in service.add_documents(name, uploads).results:
        chunks = f", {result.document.chunks} chunks" if result.document else ""
        reason = f" — {result.reason}" if result.reason else ""
        lines.append(f"  {result.filename}: {result.status}{chunks}{reason}")
    return lines


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"xiaophi-serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not become healthy within {timeout:.0f}s")


def banner(url: str) -> str:
    return f"""
xiaophi is serving your model.

  Page:   {url}/ui
  API:    {url}/v1   (model "{MODEL_NAME}", knowledge base "demo")

  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{MODEL_NAME}", "messages": [{{"role": "user", "content": "“画蛇添足”是什么意思？"}}]}}'

  .venv/bin/python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="none")
answer = client.chat.completions.create(
    model="{MODEL_NAME}",
    messages=[{{"role": "user", "content": "刘备、关羽、张飞在哪里结义？"}}],
    extra_body={{"knowledge_base": "demo"}},
)
print(answer.choices[0].message.content)
print([s["filename"] for s in answer.model_extra["sources"]])
PY

Ctrl-C stops the server.
"""


def raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xiaophi-demo", description=__doc__)
    parser.add_argument("--run", default="runs/tiny")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--kb-dir", default="kb")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-serve", action="store_true", help="Prepare everything, then exit.")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Show everything the corpus build and the training stages print, instead of one "
        "line per step and stage (their full output is otherwise in log files).",
    )
    args = parser.parse_args(argv)
    started = time.time()
    run_dir, data = Path(args.run), Path(args.data)
    try:
        build_corpora(args, run_dir, data, started)
        if args.no_serve:
            step("training the tiny model (finished stages are skipped)", started)
            run(*pipeline_command(args, run_dir))
            step("filling the demo knowledge base", started)
            print(
                "\n".join(fill_demo_kb(Path(args.kb_dir), run_dir / "embedder", data / "kb_docs"))
            )
            step("ready (not serving: --no-serve)", started)
            return
    except KeyboardInterrupt:
        raise SystemExit(INTERRUPTED) from None
    train_and_serve(args, run_dir, data, started)


def build_corpora(args: argparse.Namespace, run_dir: Path, data: Path, started: float) -> None:
    """The demo corpora, when missing or built by another version of the builder."""
    status = build_status(data)
    if status != "current":
        if status == "stale":
            step(f"{data} was built by another version of the demo builder: rebuilding it", started)
        else:
            step("building the demo corpora from packaged text", started)
        build_log = None if args.verbose else data / "build.log"
        run("xiaophi-train", "data", "demo", "--out", str(data), log=build_log)
        if build_log is not None:
            print(corpus_line(data, build_log), flush=True)
        if status == "stale" and (run_dir / "pretrain").is_dir():
            print(
                f"    note: {run_dir} was trained on the previous corpora and is kept; delete it "
                "to train on the new ones.",
                flush=True,
            )


def pipeline_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    verbose = ["--verbose"] if args.verbose else []
    return ["xiaophi-train", "pipeline", "--recipe", "tiny", "--out", str(run_dir), *verbose]


def train_and_serve(args: argparse.Namespace, run_dir: Path, data: Path, started: float) -> None:
    """The pipeline, with the server started as soon as the chat model is published and the
    knowledge base filled as soon as the embedder is: neither waits for the stages after the one
    it needs (the embedder's, the eval's), which run meanwhile. Then /health, the banner, and the
    server until Ctrl-C."""
    step("training the tiny model (finished stages are skipped)", started)
    command = pipeline_command(args, run_dir)
    pipeline = subprocess.Popen([str(BIN / command[0]), *command[1:]])
    url = f"http://{args.host}:{args.port}"
    server, kb_lines = None, None
    # Ctrl-C reaches the pipeline and the server too (one process group); SIGTERM (`kill`) this
    # process, and it stops them.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        try:
            while pipeline.poll() is None:
                if server is None and is_finished(run_dir, "dpo"):
                    server = start_server(args, run_dir)
                if server is not None and kb_lines is None and is_finished(run_dir, "embedder"):
                    kb_lines = fill_demo_kb(
                        Path(args.kb_dir), run_dir / "embedder", data / "kb_docs"
                    )
                time.sleep(0.5)
        except KeyboardInterrupt:
            pipeline.wait()
            raise SystemExit(INTERRUPTED) from None
        if pipeline.returncode != 0:
            raise SystemExit(
                f"xiaophi-demo: `xiaophi-train pipeline …` failed with exit code "
                f"{pipeline.returncode} (its output is above)"
            )
        step("the server and the demo knowledge base", started)
        server = server or start_server(args, run_dir)
        if kb_lines is None:
            kb_lines = fill_demo_kb(Path(args.kb_dir), run_dir / "embedder", data / "kb_docs")
        print("\n".join(kb_lines), flush=True)
        wait_healthy(url, server)
        step(
            f"serving {url}/ui — {time.time() - started:.0f}s from `make demo` to a served page",
            started,
        )
        print(banner(url), flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if pipeline.poll() is None:
            pipeline.terminate()
            pipeline.wait()
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()


def start_server(args: argparse.Namespace, run_dir: Path) -> subprocess.Popen:
    env = {
        "XIAOPHI_UI_DEFAULT_KB": "demo",  # the page opens on the knowledge base just filled
        **os.environ,
        "XIAOPHI_KB_EMBEDDING_MODEL": str(run_dir / "embedder"),
    }
    command = [
        str(BIN / "xiaophi-serve"),
        "--model",
        str(run_dir / "dpo"),
        "--served-model-name",
        MODEL_NAME,
        "--kb-dir",
        args.kb_dir,
        "--tools-file",  # the dictionaries the page's 使用工具 looks things up in
        str(Path(args.data) / TOOLS_FILE),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, env=env)


if __name__ == "__main__":
    main()
