"""`xiaophi-serve`: serve a checkpoint over the OpenAI-compatible API.

Flags override `XIAOPHI_*` environment variables, which override the defaults.

Exit status: 0 after Ctrl-C (SIGTERM ends it by that signal, as uvicorn does); 3 when the
server could not start (e.g. the model does not load); 4 when the engine process kept dying or
could not be restarted (serving/engine/supervision.py): the process exits so that its
supervisor restarts it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys

from serving.config import Settings


def parse_args(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="xiaophi-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (XIAOPHI_MODEL)")
    parser.add_argument(
        "--served-model-name", help="model id clients use (default: directory name)"
    )
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument(
        "--api-keys", help="comma-separated API keys; then every route but /health needs one"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument(
        "--torch-threads", type=int, help="CPU threads for torch (default: torch's choice)"
    )
    parser.add_argument(
        "--engine",
        choices=["slots", "hf-continuous", "remote"],
        help="slots (in-house, default), hf-continuous (transformers' continuous batching) or "
        "remote (an OpenAI-compatible server generates; see --remote-base-url)",
    )
    parser.add_argument(
        "--remote-base-url", help="remote engine: upstream base URL, e.g. http://vllm:8000/v1"
    )
    parser.add_argument("--remote-api-key", help="remote engine: the upstream's API key")
    parser.add_argument("--remote-model", help="remote engine: the upstream's model id")
    parser.add_argument(
        "--remote-prompt-format",
        choices=["auto", "ids", "text"],
        help="remote engine: prompts as token ids or text (default auto)",
    )
    parser.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the slots engine's model loop in its own process (default: yes)",
    )
    parser.add_argument(
        "--engine-max-restarts",
        type=int,
        help="engine process restarts in a row before the server exits with code 4 (default 5)",
    )
    parser.add_argument("--max-running", type=int, help="requests generated together (default 32)")
    parser.add_argument("--max-waiting", type=int, help="queued requests before 429 (default 128)")
    parser.add_argument("--max-batch-tokens", type=int, help="tokens per forward pass (prefill)")
    parser.add_argument(
        "--kb-dir", help="knowledge-base folder (default ./kb; other settings: XIAOPHI_KB_*)"
    )
    parser.add_argument(
        "--tools-file",
        help="dictionary tools to run at /v1/tools (JSON, e.g. data/demo/tools.json)",
    )
    parser.add_argument(
        "--max-upload-files", type=int, help="files per knowledge-base upload (default 16)"
    )
    parser.add_argument("--log-level", help="uvicorn log level (default info)")
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    # The batching thread runs torch ops while the event-loop thread handles I/O: OpenMP
    # workers that spin between ops starve the event loop on small CPUs (seen: 10x slower
    # single-stream decoding on 2 cores). Must be set before torch loads OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = Settings(**parse_args(argv))
    from serving.dictionary_tools import DictionaryTools, ToolsFileError

    try:  # before anything starts: a bad file is a message, not a traceback
        tools = DictionaryTools.from_settings(settings.tools_file)
    except ToolsFileError as exc:
        sys.exit(f"xiaophi-serve: {exc}")
    spawned = None
    if settings.engine == "slots" and settings.engine_process and settings.model is not None:
        # first: the engine process imports torch and loads the model while this process
        # imports the server and builds the page, on another core
        from serving.engine.spawn import spawn_engine_process

        spawned = spawn_engine_process(settings)

    import uvicorn
    from uvicorn.main import STARTUP_FAILURE

    from serving.app import create_app
    from serving.engine.factory import build_engine

    app = create_app(
        settings, load=functools.partial(build_engine, spawned=spawned), dictionary_tools=tools
    )
    # uvicorn.run without its reload and workers modes, so that the app can end the server
    # (a lost engine) through a graceful shutdown and then say why in the exit status
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    )
    app.state.request_exit = lambda: setattr(server, "should_exit", True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn re-raises it after shutdown
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
    sys.exit(app.state.exit_code)


if __name__ == "__main__":
    main()
