"""Helpers for tests of emulated clusters: run the CLI, capture in a namespace, and check
that a cluster left nothing behind (namespaces, root-namespace links, processes, state)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from netk8s.capture import Capture
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


def capture(netns_name: str, bpf_filter: str, interface: str = "any", count: int = 0) -> Capture:
    """A capture in a namespace by name (``with capture(ns, "tcp port 8080") as cap: ...``); with a
    cluster at hand, ``cluster.capture(target, ...)`` names the target instead."""
    return Capture(netns_name, bpf_filter, interface, count)
