"""Processes netk8s started: identity checks and PID-only termination.

A PID alone is not an identity (PIDs are reused), so records pair it with the
process start time from ``/proc/<pid>/stat``; nothing is signalled unless both
match. There is deliberately no kill-by-name here.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; split after the last ')'.
    return data.rsplit(")", 1)[-1].split()


def _start_time_of(fields: list[str] | None) -> int | None:
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """Clock ticks since boot at which ``pid`` started (field 22 of /proc/<pid>/stat)."""
    return _start_time_of(_stat_fields(pid))


def is_running(pid: int, started: int | None) -> bool:
    """True while the very process recorded (pid + start time) exists and is not a zombie."""
    fields = _stat_fields(pid)
    current = _start_time_of(fields)
    if fields is None or current is None or (started is not None and current != started):
        return False
    return fields[0] not in ("Z", "X")


def send_signal(pid: int, sig: int, group: bool = True) -> None:
    """Signal ``pid``, or its whole process group when it leads one (containers do)."""
    try:
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(pid: int, started: int | None, grace: float = 2.0, group: bool = True) -> bool:
    """SIGTERM the recorded process (its process group when it leads one), SIGKILL after
    ``grace`` seconds. Returns False when the record no longer matches a live process."""
    if not is_running(pid, started):
        return False
    send_signal(pid, signal.SIGTERM, group)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_running(pid, started):
            return True
        time.sleep(0.02)
    log.debug("pid %d ignored SIGTERM for %.1fs; sending SIGKILL", pid, grace)
    if is_running(pid, started):
        send_signal(pid, signal.SIGKILL, group)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and is_running(pid, started):
        time.sleep(0.02)
    return True
