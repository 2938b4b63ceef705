"""Container restarts: restartPolicy and the kubelet's crash-loop back-off (pure).

``Backoff`` is client-go's flowcontrol.Backoff as the kubelet uses it
(initial 10 s, doubling, capped at 5 min). The kubelet consults it only when
it is about to restart an exited container, with the exit's finish time:

- no entry yet (first restart), or the last back-off step is more than
  2 x 5 min older than the exit (the container ran stably): restart at once
  and start a fresh 10 s window;
- otherwise, while ``now - finishedAt`` is shorter than the current window the
  container waits in ``CrashLoopBackOff`` ("back-off 10s restarting failed
  container=..."); after it, the window doubles and the container restarts.

So the delays between exit and restart run 0, 10 s, 20 s, 40 s, ... 5 min.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable

INITIAL_BACKOFF = 10.0
MAX_BACKOFF = 300.0


class RestartPolicy(str, Enum):
    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"

    @classmethod
    def of(cls, value: str | None) -> "RestartPolicy":
        try:
            return cls(value or cls.ALWAYS.value)
        except ValueError:
            return cls.ALWAYS


def should_restart(policy: RestartPolicy, exit_code: int) -> bool:
    """Whether an exited app container is started again."""
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.ON_FAILURE:
        return exit_code != 0
    return False


def should_restart_init(policy: RestartPolicy, exit_code: int) -> bool:
    """Init containers run to completion: a failed one is retried unless the pod's policy is Never."""
    return exit_code != 0 and policy is not RestartPolicy.NEVER


@dataclass
class _Entry:
    backoff: float
    last_update: float


class Backoff:
    """Per-key exponential back-off with client-go's semantics; times are seconds on ``clock``."""

    def __init__(self, initial: float = INITIAL_BACKOFF, maximum: float = MAX_BACKOFF,
                 clock: Callable[[], float] | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.clock = clock or time.monotonic
        self._entries: dict[str, _Entry] = {}

    def _expired(self, event_time: float, entry: _Entry) -> bool:
        return event_time - entry.last_update > 2 * self.maximum

    def get(self, key: str) -> float:
        entry = self._entries.get(key)
        return entry.backoff if entry else 0.0

    def next(self, key: str, event_time: float) -> None:
        entry = self._entries.get(key)
        if entry is None or self._expired(event_time, entry):
            entry = self._entries[key] = _Entry(self.initial, 0.0)
        else:
            entry.backoff = min(entry.backoff * 2, self.maximum)
        entry.last_update = self.clock()

    def in_backoff_since(self, key: str, event_time: float) -> bool:
        entry = self._entries.get(key)
        if entry is None or self._expired(event_time, entry):
            return False
        return self.clock() - event_time < entry.backoff

    def remaining(self, key: str, event_time: float) -> float:
        """Seconds until the window that started at ``event_time`` closes (0 when not backing off)."""
        if not self.in_backoff_since(key, event_time):
            return 0.0
        return max(event_time + self.get(key) - self.clock(), 0.0)

    def forget_prefix(self, prefix: str) -> None:
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]

    def gc(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._entries.items() if now - e.last_update > 2 * self.maximum]:
            del self._entries[key]


def go_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration.String()`` prints whole seconds: 10s, 1m20s, 5m0s."""
    total = int(round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{secs}s"


def backoff_message(backoff: float, container: str, pod_name: str, namespace: str, uid: str) -> str:
    """``state.waiting.message`` of a container in CrashLoopBackOff."""
    return (f"back-off {go_duration(backoff)} restarting failed container={container} "
            f"pod={pod_name}_{namespace}({uid})")


def backoff_event(container: str, pod_name: str, namespace: str, uid: str) -> str:
    """Message of the kubelet's ``BackOff`` warning event."""
    return f"Back-off restarting failed container {container} in pod {pod_name}_{namespace}({uid})"


def exit_reason(exit_code: int, oom_killed: bool) -> str:
    """``state.terminated.reason`` as the container runtime reports it."""
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


def exit_code_of(returncode: int) -> int:
    """A process return code as a container exit code: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode
