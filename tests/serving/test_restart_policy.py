"""How soon a dead engine process is restarted, and when the server gives up instead."""

from __future__ import annotations

from serving.engine.supervision import RestartPolicy


def test_restart_delays_double_up_to_a_cap_and_start_over_after_a_stable_run():
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=4, stable_after_s=60, max_restarts=6)
    backoff = policy.backoff()
    assert [backoff.crashed(up_for_s=1) for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert backoff.crashed(up_for_s=1) is None  # the 7th quick crash in a row: give up
    fresh = policy.backoff()
    assert [fresh.crashed(up_for_s=1) for _ in range(3)] == [0.5, 1, 2]
    assert fresh.crashed(up_for_s=120) == 0.5  # it ran a while: a new streak
    assert RestartPolicy(max_restarts=0).backoff().crashed(up_for_s=1) is None
