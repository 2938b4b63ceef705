"""The process runtime: containers are host processes inside the pod's network namespace.

A container is started as ``ip netns exec <pod netns> <argv>`` (``ip`` then
execs the command, so the PID is the container's; it also bind-mounts
``/etc/netns/<netns>/*`` over ``/etc`` files for that process), in its own
session so its whole process group can be signalled, with stdout and stderr
appended to the container's log file. Every PID is recorded in the cluster's
state directory for crash-safe teardown.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from netk8s.cluster.state import StateDir
from netk8s.errors import KernelError
from netk8s.kernel import procs

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class RunningProcess:
    pid: int
    started: int | None
    popen: subprocess.Popen
    log_path: Path
    started_at: float = field(default_factory=time.time)

    def poll(self) -> int | None:
        return self.popen.poll()


class ProcessRuntime:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        ip = shutil.which("ip")
        if ip is None:
            raise KernelError("the `ip` command (iproute2) is missing; run `make setup`")
        self._ip = ip

    def start(self, netns_name: str | None, argv: list[str], env: dict[str, str], log_path: Path,
              what: str) -> RunningProcess:
        """Start ``argv`` in the named namespace (None: the current one) with exactly ``env``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [self._ip, "netns", "exec", netns_name, *argv] if netns_name else list(argv)
        full_env = {"PATH": DEFAULT_PATH, **env}
        with open(log_path, "ab") as log_file:
            try:
                popen = subprocess.Popen(command, env=full_env, stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                         cwd="/")
            except OSError as exc:
                raise KernelError(f"cannot start {what}: {exc.strerror}: {argv[0]}") from None
        started = procs.start_time(popen.pid)
        self.state.record_pid(popen.pid, started, what)
        log.debug("started %s as pid %d: %s", what, popen.pid, " ".join(argv))
        return RunningProcess(popen.pid, started, popen, log_path)

    def stop(self, proc: RunningProcess, grace: float) -> int | None:
        """SIGTERM the container's process group, SIGKILL after ``grace``; returns the exit code."""
        if proc.poll() is None:
            procs.terminate(proc.pid, proc.started, grace=grace)
        try:
            code = proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.state.forget_pid(proc.pid)
        return code

    def reap(self, proc: RunningProcess) -> None:
        """Forget an exited process's record."""
        self.state.forget_pid(proc.pid)


def read_log_tail(path: Path, max_bytes: int = 2048) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - max_bytes, 0))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
