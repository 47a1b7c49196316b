"""The console line of the stage that is running: what is done of its total (Trainer steps,
generated answers, evaluated models), the elapsed time and an estimate of what is left.

On a terminal the line is redrawn in place a few times a second; elsewhere (CI, `docker logs`,
a pipe) a plain line is written now and then (`heartbeat_s`), never one per step. Stage code
reports through `report(...)`, which does nothing unless `training.stage_console` shows a line
for the stage, so the stages run the same inside and outside the pipeline. Drawing happens on a
background thread: a training step only sets a few attributes, it never waits for the console.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

NAME_WIDTH = 10  # the longest stage name (dpo-data, embedder, tokenizer) plus a space
BAR_WIDTH = 20
SPINNER = "|/-\\"


def clock(seconds: float) -> str:
    """Elapsed or remaining time as m:ss (h:mm:ss past an hour)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StageLine:
    """One stage's progress on the console stream `out`.

    `update` may be called from any thread, as often as the stage likes; the line itself is
    written by a thread of its own every `redraw_s` (terminal) or `heartbeat_s` (plain output).
    """

    def __init__(
        self,
        name: str,
        out: TextIO,
        *,
        tty: bool,
        tail: str = "",
        heartbeat_s: float = 30.0,
        redraw_s: float = 0.25,
    ) -> None:
        self.name, self.out, self.tty, self.tail = name, out, tty, tail
        self.heartbeat_s, self.redraw_s = heartbeat_s, redraw_s
        self.done, self.total, self.unit, self.detail = 0, None, "", ""
        self.started = time.monotonic()
        self._rate_from: tuple[float, int] | None = None  # (time, done) the estimate counts from
        self._last_plain = self.started
        self._ticks = 0
        self._lock = threading.Lock()  # one writer at a time on `out`
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the stage reports -------------------------------------------------------------

    def update(
        self,
        done: int | None = None,
        total: int | None = None,
        unit: str | None = None,
        detail: str | None = None,
    ) -> None:
        now = time.monotonic()
        if total is not None and total != self.total:
            self.total, self._rate_from = total, None
        if unit is not None:
            self.unit = unit
        if detail is not None:
            self.detail = detail
        if done is not None:
            self.done = done
            # The estimate counts from the first report with a total, so data preparation and
            # model loading before the first step do not count as slow steps.
            if self._rate_from is None and self.total:
                self._rate_from = (now, done)

    # --- what the console sees --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.name}", daemon=True)
        self._thread.start()

    def note(self, text: str) -> None:
        """A message of its own above the bar (a warning from our code, say)."""
        with self._lock:
            self._write(("\r\x1b[K" if self.tty else "") + text + "\n")
            if self.tty:
                self._write(self._fit(self.render()))

    def finish(self, text: str) -> None:
        """Stop redrawing and replace the bar with `text` (the stage's done or failed line)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._write(("\r\x1b[K" if self.tty else "") + text + "\n")

    def render(self, now: float | None = None) -> str:
        """The line's text: name, bar or spinner, counts, elapsed time, estimate, detail."""
        now = time.monotonic() if now is None else now
        elapsed = clock(now - self.started)
        parts = []
        if self.total:
            filled = min(BAR_WIDTH, int(BAR_WIDTH * self.done / self.total))
            parts.append("█" * filled + "░" * (BAR_WIDTH - filled))
            parts.append(f"{self.done:,}/{self.total:,} {self.unit}".rstrip())
            parts.append(elapsed)
            left = self.remaining(now)
            if left is not None:
                parts.append(f"~{clock(left)} left")
        else:
            parts.append(SPINNER[self._ticks % len(SPINNER)])
            parts.append(elapsed)
        if self.detail:
            parts.append(self.detail)
        return f"{self.name:<{NAME_WIDTH}} " + "  ".join(parts)

    def plain(self, now: float | None = None) -> str:
        """The heartbeat written when the output is not a terminal."""
        now = time.monotonic() if now is None else now
        text = f"{self.name:<{NAME_WIDTH}} "
        if self.total:
            text += f"{self.done:,}/{self.total:,} {self.unit}, ".replace(" ,", ",")
        text += f"{clock(now - self.started)} elapsed"
        left = self.remaining(now)
        if left is not None:
            text += f", ~{clock(left)} left"
        return text + (f", {self.detail}" if self.detail else "")

    def remaining(self, now: float) -> float | None:
        if not self.total or self._rate_from is None:
            return None
        t0, done0 = self._rate_from
        if self.done <= done0 or self.done >= self.total or now <= t0:
            return None
        return (self.total - self.done) * (now - t0) / (self.done - done0)

    def _run(self) -> None:
        interval = self.redraw_s if self.tty else min(1.0, self.heartbeat_s)
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                if self._stop.is_set():
                    return
                if self.tty:
                    self._ticks += 1
                    self._write(self._fit(self.render(now)))
                elif now - self._last_plain >= self.heartbeat_s:
                    self._last_plain = now
                    self._write(self.plain(now) + "\n")

    def _fit(self, text: str) -> str:
        """`text` (plus the tail, when it fits) cut to the terminal's width: a line that wraps
        could not be redrawn in place."""
        width = _columns(self.out) - 1
        if self.tail and len(text) + 3 + len(self.tail) <= width:
            text = f"{text}  {self.tail}"
        return "\r" + text[:width] + "\x1b[K"

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # the console went away (closed pipe): keep training
            pass


def _columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


_active: StageLine | None = None


def active() -> StageLine | None:
    """The line shown for the running stage, if any."""
    return _active


def report(
    done: int | None = None,
    total: int | None = None,
    unit: str | None = None,
    detail: str | None = None,
) -> None:
    """Tell the console how far the running stage is (a no-op when no line is shown)."""
    line = _active
    if line is not None:
        line.update(done=done, total=total, unit=unit, detail=detail)


@contextmanager
def showing(line: StageLine | None) -> Iterator[StageLine | None]:
    """Make `line` the one `report` updates while the block runs."""
    global _active
    previous, _active = _active, line
    try:
        yield line
    finally:
        _active = previous
