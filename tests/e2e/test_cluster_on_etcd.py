"""A cluster on etcd: ``netk8s up --store etcd`` starts the cluster's own etcd, objects live under
``/registry/...`` where etcdctl finds them, and ``netk8s down`` stops etcd with everything else."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from netk8s.cluster.api import Cluster
from netk8s.cluster.state import StateDir
from netk8s.kernel import procs
from netk8s.testing.helpers import leftovers, recorded_processes, run_cli
from netk8s.testing.plugin import unique_cluster_name

REPO = Path(__file__).resolve().parents[2]


def etcdctl(endpoint: str, *args: str) -> str:
    result = subprocess.run(["etcdctl", "--endpoints", endpoint, *args], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, ETCDCTL_API="3"), check=True)
    return result.stdout


def test_a_cluster_on_etcd(down_on_exit) -> None:  # type: ignore[no-untyped-def]
    name = unique_cluster_name("et")
    down_on_exit(name)
    up = run_cli("up", "--name", name, "--store", "etcd")
    assert up.code == 0, up.stderr
    endpoint = StateDir(name).read().etcd_endpoint
    assert f"etcd: {endpoint} (etcdctl --endpoints {endpoint} get /registry --prefix --keys-only)" in up.stdout
    cluster = Cluster.attach(name)
    cluster.apply(REPO / "topologies" / "apps" / "echo.yaml")
    cluster.wait_ready("deployment", "echo", timeout=60)
    cluster.wait_ready("pod", "client", timeout=60)

    keys = etcdctl(endpoint, "get", "/registry", "--prefix", "--keys-only").split()
    assert "/registry/core/pods/default/client" in keys and "/registry/apps/deployments/default/echo" in keys
    stored = json.loads(etcdctl(endpoint, "get", "/registry/core/pods/default/client", "--print-value-only"))
    assert stored["metadata"]["name"] == "client" and "resourceVersion" not in stored["metadata"]
    revision = json.loads(etcdctl(endpoint, "get", "/registry/core/pods/default/client", "-w", "json"))
    live = cluster.get("pod", "client")
    assert int(live["metadata"]["resourceVersion"]) == revision["kvs"][0]["mod_revision"]
    listed = run_cli("--cluster", name, "get", "pods")
    assert listed.code == 0 and "client" in listed.stdout

    etcd = [(pid, started) for pid, started, what in StateDir(name).pids() if what == "etcd"]
    assert len(etcd) == 1 and procs.is_running(*etcd[0])
    processes = recorded_processes(name)
    assert run_cli("down", "--name", name).code == 0
    assert not procs.is_running(*etcd[0])
    assert leftovers(name, processes) == []


def test_an_unknown_store_is_refused() -> None:
    result = run_cli("up", "--name", unique_cluster_name("bad"), "--store", "mongo")
    assert result.code == 2 and "invalid choice: 'mongo'" in result.stderr
