"""Teardown from records: what a cluster made, and only that, is removed.

Used by the daemon on a normal stop and by ``netk8s down`` after a crash:
SIGTERM every recorded process (process group when it leads one), SIGKILL the
ones still alive after a grace period, then delete every recorded network
namespace (which destroys the veths, bridges and rules inside it) and the
``/etc/netns/<name>`` files made for it. Idempotent: running it twice is fine.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field

from netk8s.cluster.state import StateDir
from netk8s.errors import KernelError
from netk8s.kernel import netns, procs
from netk8s.kubelet.cgroups import remove_recorded as remove_recorded_cgroups

log = logging.getLogger(__name__)

ETC_NETNS = "/etc/netns"


@dataclass
class TeardownReport:
    processes: int = 0
    namespaces: int = 0
    errors: list[str] = field(default_factory=list)


def kill_recorded(state: StateDir, grace: float = 3.0, exclude: set[int] | None = None) -> int:
    exclude = exclude or set()
    live = [(pid, started) for pid, started, _ in state.pids()
            if pid not in exclude and procs.is_running(pid, started)]
    for pid, _ in live:
        procs.send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(procs.is_running(p, s) for p, s in live):
        time.sleep(0.05)
    for pid, started in live:
        if procs.is_running(pid, started):
            procs.terminate(pid, started, grace=0)
    for pid, _, _ in state.pids():
        if pid not in exclude:
            state.forget_pid(pid)
    return len(live)


def teardown(state: StateDir, exclude_pids: set[int] | None = None) -> TeardownReport:
    report = TeardownReport()
    report.processes = kill_recorded(state, exclude=exclude_pids)
    remove_recorded_cgroups(state)
    for name in state.netns_names():
        try:
            if netns.delete(name):
                report.namespaces += 1
            state.forget_netns(name)
        except KernelError as exc:
            report.errors.append(str(exc))
        etc_dir = os.path.join(ETC_NETNS, name)
        if os.path.isdir(etc_dir):
            shutil.rmtree(etc_dir, ignore_errors=True)
    log.info("teardown of %s: %d processes stopped, %d namespaces deleted", state.name, report.processes,
             report.namespaces)
    return report
