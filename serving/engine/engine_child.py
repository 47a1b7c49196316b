"""The engine process's own code: load the model, say "ready", run the slot-batching loop until
the server says "stop" (engine_process.py is the server's side of the pipe)."""

from __future__ import annotations

import contextlib
import signal
import traceback

import torch

from serving.engine.loading import engine_process_threads, load_model, pick_device
from serving.engine.slot_batching import SlotBatcher, run_batching_loop


def child_main(conn, settings) -> None:
    """Entry point of the engine process: load the model, then run the loop until "stop"."""
    # the server stops this process through the pipe (see the module docstring)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # tqdm's bar takes a multiprocessing lock (a named semaphore) that a killed process leaves
    # behind, for the resource tracker to warn about; and a bar per restart is only noise
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        if settings.torch_threads is None and pick_device(settings.device).type == "cpu":
            settings = settings.model_copy(update={"torch_threads": engine_process_threads()})
        model, tokenizer = load_model(settings)
        batcher = SlotBatcher(
            model,
            max_running=settings.max_running,
            max_batch_tokens=settings.max_batch_tokens,
            tokenizer=tokenizer,
        )
        ready = sorted(batcher.eos_token_ids), torch.get_num_threads()
        conn.send(("ready", batcher.context_length, *ready))
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the server may be gone too
            conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return

    def take(block: bool) -> list:
        commands = [conn.recv()] if block else []
        while conn.poll():
            commands.append(conn.recv())
        return commands

    try:
        run_batching_loop(batcher, take, lambda outputs: conn.send(("out", outputs)))
    except (EOFError, OSError):
        return  # the server went away
    except BaseException as exc:
        traceback.print_exc()
        with contextlib.suppress(OSError):
            conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
