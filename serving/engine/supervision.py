"""When a dead engine process is restarted, and when the server gives up and exits instead.

The engine process (engine_process.py) can die under the server: the OOM killer's SIGKILL, a
crash in native code. Its requests fail with a retryable 503 and a new process is started after
a delay that doubles with each crash in a row (0.5 s, 1 s, 2 s, … up to 30 s); a process that
stayed up `stable_after_s` starts the count over. Restarting is the cheap cure for a one-off
death: the web server, its connections and the knowledge bases stay, and /health tells load
balancers to wait.

It is no cure when the death repeats: more than `max_restarts` crashes in a row, or a new
process that reports it cannot load the model (a Python error before "ready": the weights are
gone or corrupt, which no retry mends). Then the server stops as a whole with exit code
`ENGINE_LOST_EXIT_CODE`, after a normal graceful shutdown, so that whatever runs it (docker's
restart policy, systemd's `Restart=on-failure`, Kubernetes) restarts it, counts the failures and
shows them, instead of a live process answering 503 forever. A non-zero code, not a signal: a
signal exit such as SIGTERM's counts as a clean stop for systemd, which would not restart it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Exit status of a server whose engine could not be kept running (uvicorn's own startup
#: failure, a model that does not load at all, is 3).
ENGINE_LOST_EXIT_CODE = 4


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    #: a process up at least this long has proved itself: its death starts a new streak
    stable_after_s: float = 60.0
    #: restarts allowed in one streak of quick crashes; one more crash and the server exits
    max_restarts: int = 5

    def backoff(self) -> Backoff:
        return Backoff(self)


class Backoff:
    """Counts the crashes in a row and says how long to wait before the next restart."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.streak = 0  # crashes in a row, each after less than `stable_after_s` of life

    def crashed(self, up_for_s: float) -> float | None:
        """A process that ran `up_for_s` died: seconds to wait before the next one, or None
        to give up."""
        if up_for_s >= self.policy.stable_after_s:
            self.streak = 0
        self.streak += 1
        if self.streak > self.policy.max_restarts:
            return None
        delay = self.policy.first_delay_s * 2 ** (self.streak - 1)
        return min(delay, self.policy.max_delay_s)
