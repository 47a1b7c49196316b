"""The slot-batching loop in a process of its own.

In one process the model loop and the web server share one GIL: every token streamed to a
client is Python work that the next forward pass waits for, and the other way round. Here the
server process keeps only the tokenizer; a child process (spawned, so it also works with CUDA)
loads the model and runs `run_batching_loop`. They talk over a pipe: ("add", Job),
("abort", ids), ("stop", None) one way; ("ready", context, eos ids, torch threads), ("out", [(id, token,
finished), ...]) once per step, ("fatal", message) the other. A reader thread hands each
step's tokens to the event loop, where `QueuedEngine` turns them into text deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
import traceback

import torch

from serving.engine.loading import engine_process_threads, load_model, pick_device
from serving.engine.queued import QueuedEngine, RequestState
from serving.engine.slot_batching import SlotBatcher, job_of, run_batching_loop

logger = logging.getLogger(__name__)


class ProcessSlotEngine(QueuedEngine):
    def __init__(self, settings, tokenizer, *, warmup: bool = True) -> None:
        # context length and EOS ids arrive with the child's "ready" message
        super().__init__(
            tokenizer,
            context_length=0,
            eos_token_ids=[],
            max_running=settings.max_running,
            max_waiting=settings.max_waiting,
        )
        self._settings = settings
        self._warmup = warmup
        self._process = None
        self._conn = None
        self._reader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = False
        self._stopping = False
        self._fatal: str | None = None
        self._send_lock = threading.Lock()
        self.torch_threads: int | None = None  # as the engine process reports it

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=child_main,
            args=(child_conn, self._settings),
            name="xiaophi-engine",
            daemon=True,
        )
        self._process.start()
        child_conn.close()  # so that a dead child shows as EOF here
        try:
            message = await asyncio.to_thread(self._conn.recv)
        except EOFError:
            message = ("fatal", f"the engine process exited with {self._process.exitcode}")
        if message[0] != "ready":
            await asyncio.to_thread(self._process.join, 5)
            raise RuntimeError(f"the engine process could not start: {message[1]}")
        _, self.context_length, eos, self.torch_threads = message
        self.eos_token_ids = set(eos)
        self._ready = True
        self._reader = threading.Thread(
            target=self._read, name="xiaophi-engine-reader", daemon=True
        )
        self._reader.start()
        if self._warmup:
            await self._warm_up()

    async def stop(self) -> None:
        self._fail_all("server is shutting down")
        self._stopping = True
        if self._process is None:
            return
        with contextlib.suppress(OSError):  # already gone
            self._send(("stop", None))
        await asyncio.to_thread(self._process.join, 30)
        if self._process.is_alive():
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 10)
        self._conn.close()

    @property
    def is_ready(self) -> bool:
        process = self._process
        return (
            self._ready
            and not self._stopping
            and self._fatal is None
            and process is not None
            and process.is_alive()
        )

    # ------------------------------------------------------------------ server side
    def _send(self, message) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _launch(self, state: RequestState) -> None:
        try:
            self._send(("add", job_of(state)))
        except OSError:  # the child died since `is_ready`: this request fails with the rest
            self._died(f"the engine process exited with {self._process.exitcode}")

    def _abort(self, state: RequestState) -> None:
        if not self._stopping:
            with contextlib.suppress(OSError):  # a dead child generates nothing anyway
                self._send(("abort", {state.engine_id}))

    def _read(self) -> None:
        """Reader thread: each step's tokens to the event loop; a dead child fails every request."""
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "out":
                    self._loop.call_soon_threadsafe(self._dispatch, message[1])
                elif message[0] == "fatal":
                    self._died(message[1])
                    return
        except (EOFError, OSError):
            if not self._stopping:
                self._died(f"the engine process exited with {self._process.exitcode}")

    def _died(self, error: str) -> None:
        logger.error("engine process failed: %s", error)
        self._fatal = error
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fail_all, f"engine error: {error}")


def child_main(conn, settings) -> None:
    """Entry point of the engine process: load the model, then run the loop until "stop"."""
    try:
        if settings.torch_threads is None and pick_device(settings.device).type == "cpu":
            settings = settings.model_copy(update={"torch_threads": engine_process_threads()})
        model, _ = load_model(settings)
        batcher = SlotBatcher(
            model, max_running=settings.max_running, max_batch_tokens=settings.max_batch_tokens
        )
        conn.send(
            (
                "ready",
                batcher.context_length,
                sorted(batcher.eos_token_ids),
                torch.get_num_threads(),
            )
        )
    except BaseException as exc:
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return

    def take(block: bool) -> list:
        commands = [conn.recv()] if block else []
        while conn.poll():
            commands.append(conn.recv())
        return commands

    try:
        run_batching_loop(batcher, take, lambda outputs: conn.send(("out", outputs)))
    except (EOFError, BrokenPipeError):
        return  # the server went away
    except BaseException as exc:
        traceback.print_exc()
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
