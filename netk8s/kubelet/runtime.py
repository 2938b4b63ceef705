"""The process runtime: containers are host processes inside the pod's namespaces.

A container is started as ``[sh -c 'echo $$ > <cgroup>/cgroup.procs; exec ...']
[nsenter --uts=/proc/<pause>/ns/uts --] ip netns exec <pod netns> <argv>``:
each step execs the next, so the PID is the container's and it is in its
cgroup before the command runs; ``ip netns exec`` also bind-mounts
``/etc/netns/<netns>/*`` over ``/etc`` files for that process. It runs in its
own session so its whole process group can be signalled, with stdout and
stderr appended to the container's log file. Every PID is recorded in the
cluster's state directory for crash-safe teardown.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
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


def enter_argv(netns_name: str | None, uts_pid: int | None, ip: str = "ip") -> list[str]:
    """The argv prefix that runs a command inside a pod: its UTS namespace (the pause process's
    ``uts_pid``, for the hostname), then ``ip netns exec`` (network namespace and /etc files)."""
    prefix = ["nsenter", f"--uts=/proc/{uts_pid}/ns/uts", "--"] if uts_pid else []
    return [*prefix, ip, "netns", "exec", netns_name] if netns_name else prefix


class ProcessRuntime:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        ip = shutil.which("ip")
        if ip is None:
            raise KernelError("the `ip` command (iproute2) is missing; run `make setup`")
        self._ip = ip

    def command(self, netns_name: str | None, argv: list[str], uts_pid: int | None = None,
                cgroup_procs: Path | None = None) -> list[str]:
        """The full argv that runs ``argv`` in the pod's namespaces (and cgroup)."""
        command: list[str] = []
        if cgroup_procs is not None:
            command += ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup_procs)]
        return command + enter_argv(netns_name, uts_pid, self._ip) + list(argv)

    def start(self, netns_name: str | None, argv: list[str], env: dict[str, str], log_path: Path | None,
              what: str, uts_pid: int | None = None, cgroup_procs: Path | None = None) -> RunningProcess:
        """Start ``argv`` in the named namespace (None: the current one) with exactly ``env``
        (plus a default PATH); output to ``log_path`` (None: discarded)."""
        command = self.command(netns_name, argv, uts_pid, cgroup_procs)
        full_env = {"PATH": DEFAULT_PATH, **env}
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        with (open(log_path, "ab") if log_path is not None else open(os.devnull, "wb")) as log_file:
            try:
                popen = subprocess.Popen(command, env=full_env, stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                         cwd="/")
            except OSError as exc:
                raise KernelError(f"cannot start {what}: {exc.strerror}: {command[0]}") from None
        started = procs.start_time(popen.pid)
        self.state.record_pid(popen.pid, started, what)
        log.debug("started %s as pid %d: %s", what, popen.pid, " ".join(command))
        return RunningProcess(popen.pid, started, popen, log_path or Path(os.devnull))

    def stop(self, proc: RunningProcess, grace: float) -> int | None:
        """SIGTERM the container's process group, SIGKILL after ``grace``; returns the exit code."""
        if proc.poll() is None:
            procs.terminate(proc.pid, proc.started, grace=grace)
        try:
            code = proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        _kill_leftover_group(proc.pid)
        self.state.forget_pid(proc.pid)
        return code

    def reap(self, proc: RunningProcess) -> None:
        """Forget an exited process's record; like a container runtime, end what it left running."""
        _kill_leftover_group(proc.pid)
        self.state.forget_pid(proc.pid)


def _kill_leftover_group(pgid: int) -> None:
    """SIGKILL what is left of a container's process group after its leader exited. A process
    group ID is not reused while any member lives, so this reaches only the container's children."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def read_log_tail(path: Path, max_bytes: int = 2048) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - max_bytes, 0))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
