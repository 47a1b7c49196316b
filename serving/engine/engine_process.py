"""The slot-batching loop in a process of its own, restarted when it dies.

In one process the model loop and the web server share one GIL: every token streamed to a
client is Python work that the next forward pass waits for, and the other way round. Here the
server process keeps only the tokenizer; a child process (spawned, so it also works with CUDA)
loads the model and runs `run_batching_loop`. They talk over a pipe: ("add", Job),
("abort", ids), ("stop", None) one way; ("ready", context, eos ids, torch threads), ("out", [(id, token,
finished), ...]) once per step, ("fatal", message) the other. A reader thread hands each
step's tokens to the event loop, where `QueuedEngine` turns them into text deltas.

Supervision: the reader thread also sees the process end (EOF on the pipe, or "fatal"). Unless
the server is stopping, every request then fails with a retryable 503 (`engine_restarting`, as
an SSE error event for a stream already under way) and a new process starts after the delay
supervision.py's policy gives; while it comes, /health and new requests are 503 with
`Retry-After`. When the policy gives up, or the new process reports it cannot load the model,
the engine is lost: `on_lost` tells the app, which ends the server with a non-zero code
(supervision.py says why exit rather than restart then).

A normal stop goes through the pipe only: the child ignores SIGINT and SIGTERM, which Ctrl-C
and systemd send to the whole process group, so it ends when the server says so, after the
server's in-flight answers, and its end is never taken for a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import threading
import time
from typing import Literal

from serving.engine.base import (
    ENGINE_RESTARTING,
    EngineNotReadyError,
    EngineRestartingError,
    EngineStats,
    EngineStatus,
)
from serving.engine.queued import QueuedEngine, RequestState
from serving.engine.slot_batching import job_of
from serving.engine.spawn import SpawnedProcess, spawn_engine_process
from serving.engine.supervision import RestartPolicy

logger = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """An engine process ended before "ready"; `reported`: it said why (a Python error while
    loading the model) rather than just vanish (killed)."""

    def __init__(self, message: str, reported: bool) -> None:
        super().__init__(message)
        self.reported = reported


class ProcessSlotEngine(QueuedEngine):
    """The `slots` engine with its model loop in a supervised process (see the module docstring)."""

    def __init__(
        self,
        settings,
        tokenizer,
        *,
        warmup: bool = True,
        policy: RestartPolicy | None = None,
        spawned: SpawnedProcess | None = None,
    ) -> None:
        """`spawned`: an engine process already started for `settings` (spawn.py), which the
        first start adopts instead of starting one."""
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
        self._spawned = spawned
        self._backoff = (
            policy or RestartPolicy(max_restarts=settings.engine_max_restarts)
        ).backoff()
        self._child: EngineChild | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: Literal["starting", "ok", "restarting", "stopped"] = "starting"
        self._ready_at = 0.0  # when the running process said "ready" (monotonic)
        self._start_s = 0.0  # how long the last start took, for Retry-After
        self._restart_at = 0.0  # when the pending restart begins
        self._restart_task: asyncio.Task | None = None
        self._death = ""  # how the last process ended
        self._lost: str | None = None
        self.restarts = 0
        self.torch_threads: int | None = None  # as the engine process reports it

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._start_child()
        except EngineStartError as exc:
            raise RuntimeError(f"the engine process could not start: {exc}") from None
        if self._warmup:
            await self._warm_up()

    async def _start_child(self) -> None:
        """Start an engine process and wait for its "ready" (raises `EngineStartError`)."""
        spawned, self._spawned = self._spawned, None  # an early process serves the first start
        child = EngineChild(self._settings, self._loop, self._on_output, self._on_end, spawned)
        self._child = child
        self.context_length, eos, self.torch_threads = await child.ready
        self.eos_token_ids = set(eos)
        self._ready_at = time.monotonic()
        self._start_s = self._ready_at - child.started_at
        self._state = "ok"

    async def stop(self) -> None:
        self._state = "stopped"  # first: from now on the process's end is no crash
        self._fail_all("server is shutting down")
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        child = self._child
        if child is None:
            return
        if child.ready.done():
            with contextlib.suppress(OSError):  # already gone
                child.send(("stop", None))
        else:  # still loading the model: it reads no pipe yet, and has nothing to finish
            child.kill()
        if not await child.wait(30):
            child.kill()
            await child.wait(10)

    @property
    def is_ready(self) -> bool:
        return self._state == "ok"

    @property
    def status(self) -> EngineStatus:
        return {"ok": "ok", "restarting": "restarting"}.get(self._state, "stopped")

    @property
    def unavailable_reason(self) -> str:
        if self._state == "restarting":
            return f"the model engine is restarting ({self._death})"
        if self._lost is not None:
            return f"the model engine is lost: {self._lost}"
        return "the model engine stopped"

    def not_ready_error(self) -> EngineNotReadyError:
        if self._state != "restarting":
            return super().not_ready_error()
        # the delay left plus as long as the last start took
        wait = self._restart_at + self._start_s - time.monotonic()
        return EngineRestartingError(self.unavailable_reason, max(1, math.ceil(wait)))

    def stats(self) -> EngineStats:
        stats = super().stats()
        stats.restarts = self.restarts
        return stats

    @property
    def pid(self) -> int | None:
        """The engine process's id (None before the first start)."""
        return self._child.pid if self._child is not None else None

    # ------------------------------------------------------------------ supervision
    def _on_end(self, child: EngineChild, reason: str) -> None:
        """A process ended (on the loop). Only the running one's end, while serving, is a crash:
        at start and restart the caller awaits its "ready", and a stop ends it on purpose."""
        if child is self._child and self._state == "ok":
            self._crashed(reason, up_for_s=time.monotonic() - self._ready_at)

    def _crashed(self, reason: str, up_for_s: float) -> None:
        self._death = reason
        delay = self._backoff.crashed(up_for_s)
        failed = len(self._requests)
        self._state = "restarting" if delay is not None else "stopped"
        # retryable either way: the engine comes back, or the server's supervisor restarts it
        coming = "the model engine is restarting" if delay is not None else "the server stops"
        self._fail_all(f"{reason}; {coming}", status=503, code=ENGINE_RESTARTING)
        if delay is None:
            streak = self._backoff.streak
            stable = self._backoff.policy.stable_after_s
            self._lose(
                f"the engine process crashed {streak} times in a row, each within {stable:g} s "
                f"of its start (last: {reason})"
            )
            return
        self.restarts += 1
        logger.error(
            "%s; open requests failed: %d; restarting it in %.1f s (restart %d)",
            reason,
            failed,
            delay,
            self.restarts,
        )
        self._restart_at = time.monotonic() + delay
        self._restart_task = self._loop.create_task(self._restart(delay))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._start_child()
        except EngineStartError as exc:
            if exc.reported:  # it cannot load the model: no retry mends missing weights
                self._state = "stopped"
                self._lose(f"cannot restart the engine process: {exc}")
            else:  # it died while loading (killed again): one more crash in the streak
                self._crashed(str(exc), up_for_s=0.0)
            return
        logger.warning("engine process restarted (pid %d)", self._child.pid)
        if self._warmup:
            await self._warm_up()

    def _lose(self, reason: str) -> None:
        self._lost = reason
        logger.critical("the model engine is lost: %s", reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    # ------------------------------------------------------------------ server side
    def _launch(self, state: RequestState) -> None:
        with contextlib.suppress(OSError):  # the process died since `is_ready`: its end fails
            self._child.send(("add", job_of(state)))  # this request with the others

    def _abort(self, state: RequestState) -> None:
        if self._state == "ok":
            with contextlib.suppress(OSError):  # a dead process generates nothing anyway
                self._child.send(("abort", {state.engine_id}))

    def _on_output(self, child: EngineChild, outputs) -> None:
        if child is self._child:
            self._dispatch(outputs)


class EngineChild:
    """One engine process: the process, the server's end of its pipe, and the thread that
    reads the pipe and reports to the event loop — each step's tokens (`on_output`), the
    "ready" message (`ready`), and the end (`on_end`, after the process is reaped)."""

    def __init__(
        self,
        settings,
        loop: asyncio.AbstractEventLoop,
        on_output,
        on_end,
        spawned: SpawnedProcess | None = None,
    ) -> None:
        spawned = spawned or spawn_engine_process(settings)
        self.process, self._conn = spawned.process, spawned.conn
        self.pid = self.process.pid
        self.started_at = spawned.started_at
        self._loop = loop
        self._on_output = on_output
        self._on_end = on_end
        self._send_lock = threading.Lock()
        #: (context length, eos ids, torch threads); an `EngineStartError` if it ends first
        self.ready: asyncio.Future = loop.create_future()
        # retrieved here, so that no "exception never retrieved" shows if nobody awaits it
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.ended = asyncio.Event()
        self._reader = threading.Thread(
            target=self._read, name="xiaophi-engine-reader", daemon=True
        )
        self._reader.start()

    def send(self, message) -> None:
        """Raises OSError once the process (or our end of the pipe) is gone."""
        with self._send_lock:
            self._conn.send(message)

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # already reaped
            self.process.kill()

    async def wait(self, timeout: float) -> bool:
        """Wait until the process has ended and been reaped; False on timeout."""
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _read(self) -> None:
        fatal = None
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "out":
                    self._post(self._on_output, self, message[1])
                elif message[0] == "ready":
                    self._post(_settle, self.ready, tuple(message[1:]), None)
                elif message[0] == "fatal":
                    fatal = message[1]
                    break
        except (EOFError, OSError):
            pass
        self.process.join(10)  # it is ending: reaped here, for its exit code
        with self._send_lock:  # no send may hit a closed (and maybe reused) descriptor
            self._conn.close()
        reason = fatal or exit_description(self.process.exitcode)
        self._post(self._end, reason, fatal is not None)

    def _end(self, reason: str, reported: bool) -> None:
        _settle(self.ready, None, EngineStartError(reason, reported))
        self.ended.set()
        self._on_end(self, reason)

    def _post(self, callback, *args) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody listens
            self._loop.call_soon_threadsafe(callback, *args)


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "the engine process closed its pipe"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"the engine process was killed by {signal.Signals(-exitcode).name}"
    return f"the engine process exited with code {exitcode}"
