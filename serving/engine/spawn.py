"""Starting an engine process, kept free of torch so that `xiaophi-serve` can start one first
thing: the child's imports and model load then overlap the server's own (routes, the page)
instead of following them.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess


@dataclass
class SpawnedProcess:
    process: BaseProcess
    conn: Connection  # the server's end of the pipe
    started_at: float  # time.monotonic() when it was started


def spawn_engine_process(settings) -> SpawnedProcess:
    """Start an engine process for `settings` (spawned, so that CUDA works in it too); it loads
    the model and says "ready" on the pipe (engine_process.py speaks the rest)."""
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(
        target=_engine_process_main, args=(child_conn, settings), name="xiaophi-engine", daemon=True
    )
    process.start()
    child_conn.close()  # so that a dead child shows as EOF here
    return SpawnedProcess(process, conn, time.monotonic())


def _engine_process_main(conn: Connection, settings) -> None:
    from serving.engine.engine_child import child_main

    child_main(conn, settings)
