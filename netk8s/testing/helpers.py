"""Helpers for tests of emulated clusters: run the CLI, and check that a cluster
left nothing behind (namespaces, root-namespace links, processes, state)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from netk8s.cluster.api import wait_for  # noqa: F401  (re-exported for tests)
from netk8s.cluster.state import StateDir
from netk8s.kernel import netns, procs

ProcessRecord = tuple[int, "int | None", str]
@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, timeout: float = 240, input: str | None = None, cwd: Path | None = None) -> CliResult:
    """Run ``netk8s ARGS`` in a subprocess (same interpreter) and capture its output."""
    result = subprocess.run([sys.executable, "-m", "netk8s", *args], capture_output=True, text=True,
                            timeout=timeout, input=input, cwd=cwd)
    return CliResult(result.returncode, result.stdout, result.stderr)


def namespaces_of(cluster: str) -> list[str]:
    return netns.list_named(f"nk-{cluster}-")


def recorded_processes(cluster: str) -> list[ProcessRecord]:
    """Every process the cluster recorded, plus its daemon, for a later `nothing_left` check."""
    state = StateDir(cluster)
    record = state.read()
    return state.pids() + [(record.daemon_pid, record.daemon_start_time, "daemon")]


def leftovers(cluster: str, processes: list[ProcessRecord]) -> list[str]:
    """What a torn-down cluster left behind; empty when teardown was complete."""
    found = [f"namespace {n}" for n in namespaces_of(cluster)]
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"root-namespace link {line.split(':')[1].strip()}" for line in root_links.splitlines()
              if f" nk-{cluster}-" in line]
    found += [f"process {pid} ({what})" for pid, started, what in processes if procs.is_running(pid, started)]
    if StateDir(cluster).path.exists():
        found.append(f"state directory {StateDir(cluster).path}")
    return found


class Capture:
    """A tcpdump running inside a namespace (``with capture(ns, "tcp port 8080") as cap: ...``).

    Started in the background before the traffic, stopped (its own PID only) when the block
    ends; ``lines`` are tcpdump's one-line packet summaries (``-n``: numeric addresses).
    """

    def __init__(self, netns_name: str, bpf_filter: str, interface: str = "any", count: int = 0,
                 timeout: float = 10.0) -> None:
        argv = ["ip", "netns", "exec", netns_name, "tcpdump", "-l", "-n", "-i", interface]
        if count:
            argv += ["-c", str(count)]
        self._argv = [*argv, bpf_filter]
        self._timeout = timeout
        self._proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def __enter__(self) -> "Capture":
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stderr is not None
        # tcpdump says "listening on ..." once its socket is open: only then is the capture live.
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if "listening on" in line or not line:
                break
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        time.sleep(0.2)  # let the last packets reach the capture
        self._proc.terminate()
        try:
            out, _ = self._proc.communicate(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        self.lines = [line for line in out.splitlines() if line.strip()]


def capture(netns_name: str, bpf_filter: str, interface: str = "any", count: int = 0) -> Capture:
    return Capture(netns_name, bpf_filter, interface, count)
