"""Bringing clusters up and down, shared by the CLI and the Python API.

``up`` validates everything it can in the caller's process (root, tools,
topology, a free name), then starts the cluster daemon detached and waits
until it reports Running (nodes Ready, manifests applied) or Failed. ``down``
stops the daemon and then removes, from the state directory's records, every
namespace and process the cluster made, which also cleans up after a daemon
that crashed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time

from netk8s.api import meta
from netk8s.cluster.etcd import require_etcd
from netk8s.cluster.state import (
    ClusterRecord,
    Phase,
    StateDir,
    check_cluster_name,
    list_clusters,
)
from netk8s.cluster.teardown import TeardownReport, teardown
from netk8s.emulator.network import EmulatedNetwork, preflight
from netk8s.errors import ClusterExistsError, NetK8sError, NotFoundError, UserError
from netk8s.kernel import procs
from netk8s.kubelet.runtime import read_log_tail
from netk8s.topology import StoreKind, Topology, to_dict

log = logging.getLogger(__name__)

UP_TIMEOUT = 180.0
DAEMON_STOP_TIMEOUT = 60.0


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UserError(f"netk8s {what} needs root (network namespaces and iptables): run it with sudo")


def daemon_alive(record: ClusterRecord) -> bool:
    return bool(record.daemon_pid) and procs.is_running(record.daemon_pid, record.daemon_start_time)


def up(topology: Topology, timeout: float = UP_TIMEOUT) -> ClusterRecord:
    require_root("up")
    check_cluster_name(topology.name)
    preflight()
    if topology.store is StoreKind.ETCD:
        require_etcd()
    state = StateDir(topology.name)
    if state.path.exists():
        try:
            record = state.read()
            alive = daemon_alive(record)
        except NetK8sError:
            alive = False
        if alive:
            raise ClusterExistsError(f'cluster "{topology.name}" already exists; use another --name or run '
                                     f"`netk8s down --name {topology.name}` first")
        raise ClusterExistsError(f'cluster "{topology.name}" has leftover state from a run that did not stop '
                                 f"cleanly ({state.path}); run `netk8s down --name {topology.name}` to clean up")
    state.create(ClusterRecord(name=topology.name, created=meta.now(), topology=to_dict(topology)))
    try:
        # Missing kernel features (netem for link delay) fail here, before anything is started.
        EmulatedNetwork(topology, state).check_link_features()
    except NetK8sError:
        down(topology.name)
        raise
    with open(state.log_file, "ab") as log_file:
        daemon = subprocess.Popen([sys.executable, "-m", "netk8s.cluster.daemon", str(state.path)],
                                  stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True, close_fds=True)
    try:
        return _wait_running(state, daemon, timeout)
    except KeyboardInterrupt:
        # Interrupted while waiting: do not leave a half-started cluster behind.
        down(topology.name)
        raise


def _wait_running(state: StateDir, daemon: subprocess.Popen, timeout: float) -> ClusterRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = state.read()
        if record.phase is Phase.RUNNING:
            return record
        exited = daemon.poll() is not None
        if record.phase is Phase.FAILED or exited or time.monotonic() > deadline:
            if record.phase is Phase.FAILED:
                reason = record.error
            elif exited:
                tail = read_log_tail(state.log_file).strip().splitlines()
                reason = f"the cluster daemon exited ({daemon.returncode}): {tail[-1] if tail else 'no output'}"
            else:
                reason = f"the cluster did not come up within {timeout:.0f}s"
            log_copy = _keep_log(state)
            down(state.name)
            raise NetK8sError(f"cluster {state.name} failed to start: {reason} (log: {log_copy})")
        time.sleep(0.1)


def _keep_log(state: StateDir) -> str:
    """Copy the daemon log out of the state dir (which down removes) for the error message."""
    target = f"/tmp/netk8s-{state.name}-failed.log"
    try:
        shutil.copyfile(state.log_file, target)
    except OSError:
        return str(state.log_file)
    return target


def down(name: str) -> TeardownReport:
    require_root("down")
    state = StateDir(name)
    if not state.path.exists():
        raise NotFoundError(f'cluster "{name}" not found; running clusters: '
                            f"{', '.join(list_clusters()) or 'none'}")
    try:
        record: ClusterRecord | None = state.read()
    except NetK8sError:
        record = None
    if record is not None and record.daemon_pid:  # never signal pid 0 (our own process group)
        asked = time.monotonic()
        if procs.terminate(record.daemon_pid, record.daemon_start_time, grace=DAEMON_STOP_TIMEOUT, group=False) \
                and time.monotonic() - asked >= DAEMON_STOP_TIMEOUT:
            log.warning("cluster daemon %d did not stop in %.0fs; killed it", record.daemon_pid, DAEMON_STOP_TIMEOUT)
    report = teardown(state)
    shutil.rmtree(state.path, ignore_errors=True)
    return report


def resolve_cluster(name: str | None) -> StateDir:
    """The cluster a command targets: the named one, or the only one running."""
    if name:
        state = StateDir(check_cluster_name(name))
        if not state.exists():
            raise NotFoundError(f'cluster "{name}" not found; running clusters: '
                                f"{', '.join(list_clusters()) or 'none'}")
        return state
    clusters = list_clusters()
    if not clusters:
        raise NotFoundError("no netk8s cluster is running; start one with `netk8s up`")
    if len(clusters) > 1:
        raise UserError(f"several clusters are running ({', '.join(clusters)}); pick one with --cluster NAME")
    return StateDir(clusters[0])
