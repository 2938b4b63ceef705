"""The kubelet's crash-loop back-off schedule and restart policies."""

from __future__ import annotations

import pytest

from netk8s.kubelet.restart import (
    Backoff,
    RestartPolicy,
    backoff_message,
    exit_code_of,
    exit_reason,
    go_duration,
    should_restart,
    should_restart_init,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crash_loop(run_seconds: float, crashes: int) -> list[float]:
    """Delays between each exit and the next start, driven the way the kubelet drives the back-off."""
    clock = Clock()
    backoff = Backoff(clock=clock)
    delays = []
    for _ in range(crashes):
        clock.now += run_seconds
        finished = clock.now
        while backoff.in_backoff_since("c", finished):
            clock.now += 0.5
        backoff.next("c", finished)
        delays.append(clock.now - finished)
    return delays


def test_first_restart_is_immediate_then_10s_doubling_to_5_minutes() -> None:
    delays = crash_loop(1.0, 9)
    assert [round(d) for d in delays] == [0, 10, 20, 40, 80, 160, 300, 300, 300]


def test_a_container_that_ran_longer_than_10_minutes_starts_over() -> None:
    clock = Clock()
    backoff = Backoff(clock=clock)
    for _ in range(4):  # build up to 80 s
        finished = clock.now
        clock.now += backoff.get("c")
        backoff.next("c", finished)
    assert backoff.get("c") == 80
    clock.now += 601  # ran stably for more than 2 x 5 min
    assert not backoff.in_backoff_since("c", clock.now)
    backoff.next("c", clock.now)
    assert backoff.get("c") == 10


def test_remaining_and_reset() -> None:
    clock = Clock()
    backoff = Backoff(clock=clock)
    backoff.next("c", clock.now)
    clock.now += 1
    finished = clock.now
    clock.now += 4
    assert backoff.in_backoff_since("c", finished) and backoff.remaining("c", finished) == 6
    backoff.forget_prefix("c")
    assert backoff.get("c") == 0 and backoff.remaining("c", finished) == 0


@pytest.mark.parametrize("seconds,text", [(10, "10s"), (40, "40s"), (80, "1m20s"), (160, "2m40s"),
                                          (300, "5m0s"), (3725, "1h2m5s")])
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_backoff_message_is_the_kubelets() -> None:
    assert backoff_message(20, "app", "web", "default", "1234") == \
        "back-off 20s restarting failed container=app pod=web_default(1234)"


@pytest.mark.parametrize("policy,code,app,init", [
    (RestartPolicy.ALWAYS, 0, True, False), (RestartPolicy.ALWAYS, 1, True, True),
    (RestartPolicy.ON_FAILURE, 0, False, False), (RestartPolicy.ON_FAILURE, 2, True, True),
    (RestartPolicy.NEVER, 0, False, False), (RestartPolicy.NEVER, 1, False, False),
])
def test_restart_policies(policy: RestartPolicy, code: int, app: bool, init: bool) -> None:
    assert should_restart(policy, code) is app
    assert should_restart_init(policy, code) is init


def test_exit_codes_and_reasons() -> None:
    assert exit_code_of(-15) == 143 and exit_code_of(-9) == 137 and exit_code_of(3) == 3
    assert exit_reason(0, False) == "Completed" and exit_reason(1, False) == "Error"
    assert exit_reason(137, True) == "OOMKilled"
    assert RestartPolicy.of(None) is RestartPolicy.ALWAYS and RestartPolicy.of("Never") is RestartPolicy.NEVER
