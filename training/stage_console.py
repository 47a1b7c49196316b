"""What `xiaophi-train pipeline` shows while its stages run, and where everything else goes.

Each stage gets one console line: a progress bar (`training.progress`) while it runs, replaced by
its figures when it ends (`training.stage_figures`). Everything the stage itself prints —
Trainer log dicts, tqdm bars, library warnings, lm-eval's output, even a subprocess's or a C
library's — goes to `<run>/logs/<stage>.log`: file descriptors 1 and 2 are pointed at that file
for the stage's duration (`captured`), and the console is a duplicate of the original stdout made
before that. Warnings raised by our own code, and a failed stage's error with its log's path,
still reach the console. `--verbose` (capture off) streams everything to the console as before.

Under a multi-process launch only the main process writes to the console; every process's
output goes to a log of its own (`<stage>.rank<N>.log` beyond rank 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from training.distributed import is_main_process, process_rank
from training.progress import NAME_WIDTH, StageLine, showing
from training.stage_figures import done_line, duration

LOGS = "logs"
PACKAGES = ("training", "rag", "serving", "ui", "demo")  # "our own code", for warnings
_ROOT = Path(__file__).resolve().parents[1]


def logs_dir(run_dir: Path) -> Path:
    return Path(run_dir) / LOGS


def stage_log(run_dir: Path, stage: str, rank: int = 0) -> Path:
    """`<run>/logs/<stage>.log`; another process of a launch writes `<stage>.rank<N>.log`."""
    return logs_dir(run_dir) / (f"{stage}.log" if rank == 0 else f"{stage}.rank{rank}.log")


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    # C stdio buffers (a native library's printf) belong to whichever file they were meant for.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def _fd_of(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def captured(log_file: Path, header: str = "") -> Iterator[None]:
    """Send everything written to fds 1 and 2 (Python, subprocesses, C code) to `log_file`
    (appended) while the block runs; put them back afterwards, also when it raises, after
    writing the traceback into the log."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    _flush_all()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    # Where sys.stdout / sys.stderr are not fds 1 and 2 (pytest, a notebook), Python's own writes
    # would pass the redirection by: point them at the fds while the block runs.
    swapped = {}
    for name, fd in (("stdout", 1), ("stderr", 2)):
        if _fd_of(getattr(sys, name)) != fd:
            swapped[name] = getattr(sys, name)
            # closefd=False and never closed: a logging handler created meanwhile may keep it.
            stream = open(fd, "w", 1, "utf-8", "backslashreplace", closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)
    try:
        if header:
            os.write(log_fd, header.encode("utf-8"))
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        try:
            yield
        except BaseException:
            traceback.print_exc()  # the log keeps the whole story; the console gets a summary
            raise
    finally:
        _flush_all()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        for name, stream in swapped.items():
            setattr(sys, name, stream)


def is_our_code(filename: str) -> bool:
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return any(path.is_relative_to(_ROOT / package) for package in PACKAGES)


class _NoteHandler(logging.Handler):
    """Our own loggers' warnings and errors, shown on the console as well as in the log."""

    def __init__(self, note: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.note = note

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.note(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def _our_warnings_to(note: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, warnings raised by our own packages are also passed to `note`."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        original(message, category, filename, lineno, file, line)
        if is_our_code(filename):
            note(f"warning: {message} ({Path(filename).name}:{lineno})")

    handler = _NoteHandler(note)
    loggers = [logging.getLogger(p) for p in PACKAGES]
    warnings.showwarning = show
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        warnings.showwarning = original
        for logger in loggers:
            logger.removeHandler(handler)


class StageConsole:
    """The pipeline's console: a line per stage, and (with `capture`) each stage's output in its
    log file.

    `out` is the console stream; without one, lines go to `log` (a print-like callable) and
    nothing is captured — the plain, as-before behaviour `run_pipeline` keeps for its callers.
    """

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        capture: bool = True,
        tty: bool | None = None,
        log: Callable[[str], None] = print,
        heartbeat_s: float = 30.0,
        main: bool | None = None,
    ) -> None:
        self.out, self.log = out, log
        self.capture = capture and out is not None
        self.tty = bool(tty if tty is not None else out is not None and out.isatty())
        self.heartbeat_s = heartbeat_s
        self.main = is_main_process() if main is None else main
        self._told_where = False

    @classmethod
    def for_terminal(cls, verbose: bool = False) -> StageConsole:
        """A console on this process's stdout: quiet (output to log files) unless `verbose`."""
        if verbose or _fd_of(sys.stdout) is None:
            return cls(None, capture=False)
        sys.stdout.flush()
        # A duplicate of fd 1 keeps reaching the terminal while fd 1 itself points at a log.
        out = os.fdopen(
            os.dup(sys.stdout.fileno()), "w", encoding="utf-8", errors="replace", buffering=1
        )
        return cls(out)

    def say(self, text: str) -> None:
        if not self.main:
            return
        if self.out is None:
            self.log(text)
            return
        sys.stdout.flush()  # whatever was printed before comes first
        self.out.write(text + "\n")
        self.out.flush()

    def skipped(self, stage: str, folder: Path) -> None:
        self.say(f"{stage:<{NAME_WIDTH}} finished earlier in {folder}, skipping")

    def run(self, stage: str, run_dir: Path, work: Callable[[], dict]) -> dict:
        """Run `work` (the stage) with its line, its output in its log file, then its figures."""
        if not self.capture:
            return self._run_plain(stage, work)
        log_file = stage_log(run_dir, stage, process_rank())
        if not self._told_where:
            self._told_where = True
            self.say(
                f"each stage's full output goes to {logs_dir(run_dir)}/<stage>.log "
                "(--verbose shows it here instead)"
            )
        line = None
        if self.main:
            line = StageLine(
                stage, self.out, tty=self.tty, tail=f"log {log_file}", heartbeat_s=self.heartbeat_s
            )
            if not self.tty:
                self.say(f"{stage:<{NAME_WIDTH}} running — full output in {log_file}")
            line.start()
        note = (lambda text: line.note(f"{stage:<{NAME_WIDTH}} {text}")) if line else print
        header = (
            f"\n===== {stage} · {time.strftime('%Y-%m-%d %H:%M:%S')} · pid {os.getpid()} =====\n"
        )
        started = time.monotonic()
        try:
            with showing(line), _our_warnings_to(note), captured(log_file, header):
                report = work()
        except BaseException as err:
            if line is not None:
                line.finish(self._failed(stage, err, time.monotonic() - started, log_file))
            raise
        if line is not None:
            line.finish(done_line(stage, report, time.monotonic() - started))
        return report

    def _run_plain(self, stage: str, work: Callable[[], dict]) -> dict:
        self.say(f"{stage:<{NAME_WIDTH}} running")
        started = time.monotonic()
        try:
            report = work()
        except BaseException as err:
            self.say(self._failed(stage, err, time.monotonic() - started, None))
            raise
        self.say(done_line(stage, report, time.monotonic() - started))
        return report

    @staticmethod
    def _failed(stage: str, err: BaseException, seconds: float, log_file: Path | None) -> str:
        what = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        text = f"{stage:<{NAME_WIDTH}} {what} after {duration(seconds)}"
        if not isinstance(err, KeyboardInterrupt):
            text += f" — {type(err).__name__}: {err}"
        if log_file is not None:
            text += f"\n{'':<{NAME_WIDTH}} its full output, traceback included: {log_file}"
        return text
