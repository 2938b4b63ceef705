"""The walking skeleton end to end: default cluster up, a Deployment behind a ClusterIP
answers real packets, and `netk8s down` leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from netk8s.cluster.api import Cluster
from netk8s.testing.helpers import leftovers, namespaces_of, recorded_processes, run_cli
from netk8s.testing.plugin import unique_cluster_name

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "topologies" / "apps" / "echo.yaml"


def diagnostics(cluster: Cluster) -> str:
    """What a failed data-path assertion needs to be understood: pods, endpoints, the daemon's log."""
    pods = run_cli("--cluster", cluster.name, "get", "pods", "-o", "wide").stdout
    slices = run_cli("--cluster", cluster.name, "get", "endpointslices", "-o", "yaml").stdout
    log = (cluster.state.log_file.read_text()[-6000:] if cluster.state.log_file.exists() else "")
    return f"\n--- pods\n{pods}\n--- endpointslices\n{slices}\n--- daemon.log (tail)\n{log}"


@pytest.fixture
def forward_drop():
    """Set the root namespace's FORWARD policy to DROP (as Docker does) for the test, then restore it."""
    save = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True)
    if save.returncode != 0:
        pytest.fail(f"iptables unusable in the root namespace: {save.stderr.strip()}")
    policy = save.stdout.splitlines()[0].split()[-1]  # "-P FORWARD ACCEPT"
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-P", "FORWARD", policy], check=True)


def test_clusterip_service_answers_with_real_packets(down_on_exit, forward_drop) -> None:
    name = unique_cluster_name("sk")
    down_on_exit(name)
    up = run_cli("up", "--name", name)
    assert up.code == 0, up.stderr
    assert "kubeconfig:" in up.stdout

    # A second `up` of the same name is refused without touching the running cluster.
    again = run_cli("up", "--name", name)
    assert again.code == 2 and again.stderr.strip().count("\n") == 0
    assert "already exists" in again.stderr

    nodes = run_cli("--cluster", name, "get", "nodes", "-o", "json")
    assert nodes.code == 0, nodes.stderr
    assert sorted(n["metadata"]["name"] for n in json.loads(nodes.stdout)["items"]) == [
        "control-plane", "worker", "worker2"]

    applied = run_cli("--cluster", name, "apply", "-f", str(APP))
    assert applied.code == 0, applied.stderr
    assert applied.stdout.splitlines() == ["deployment.apps/echo created", "service/echo created",
                                           "pod/client created"]
    cluster = Cluster.attach(name)
    cluster.wait_ready("deployment", "echo", timeout=60)
    cluster.wait_ready("pod", "client", timeout=60)
    cluster.wait_service("echo", timeout=30)

    client = cluster.get("pod", "client")
    assert client["spec"]["nodeName"] in ("worker", "worker2")  # the control plane is tainted
    client_ip = client["status"]["podIP"]
    cluster_ip = cluster.get("service", "echo")["spec"]["clusterIP"]

    script = f"for i in $(seq 30); do curl -sS -m 3 http://{cluster_ip}/; echo; done"
    out = cluster.exec("client", ["sh", "-c", script], timeout=120)
    answers = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(answers) == 30, out.stdout + out.stderr + diagnostics(cluster)
    backends = Counter(a["pod"] for a in answers)
    assert len(backends) >= 2, backends
    endpoints = {p["metadata"]["name"] for p in cluster.list("pods", "default", "app=echo")}
    assert set(backends) <= endpoints
    # No SNAT for pod -> ClusterIP: every backend saw the client pod's own address.
    assert {a["client"].split(":")[0] for a in answers} == {client_ip}

    # From the external host straight to a pod IP (host-gw routes on the client host).
    pod_ip = answers[0]["podIP"]
    direct = run_cli("--cluster", name, "host", "exec", "client", "--", "curl", "-s", "-m", "3",
                    f"http://{pod_ip}:8080/")
    assert direct.code == 0, direct.stderr
    seen = json.loads(direct.stdout)
    host_ip = str(cluster.topology.primary_address("client"))
    assert seen["podIP"] == pod_ip and seen["client"].split(":")[0] == host_ip

    # The kube-proxy chain for the service carries kube-proxy's hash-derived name.
    from netk8s.proxy.hashing import service_chain
    chain = service_chain("default/echo:http", "tcp")
    nat = cluster.node(client["spec"]["nodeName"]).exec(["iptables-save", "-t", "nat"], check=True).stdout
    assert f"-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp" in nat and f"-j {chain}" in nat

    processes = recorded_processes(name)
    assert namespaces_of(name)
    down = run_cli("down", "--name", name)
    assert down.code == 0, down.stderr
    assert leftovers(name, processes) == []


def test_down_after_a_crashed_daemon_removes_everything(down_on_exit) -> None:
    import os
    import signal

    from netk8s.cluster.state import StateDir

    name = unique_cluster_name("cr")
    down_on_exit(name)
    assert run_cli("up", "--name", name).code == 0
    cluster = Cluster.attach(name)
    cluster.apply(APP)
    cluster.wait_ready("deployment", "echo", timeout=60)
    processes = recorded_processes(name)
    record = StateDir(name).read()
    os.kill(record.daemon_pid, signal.SIGKILL)  # the daemon dies without cleaning up
    listing = run_cli("clusters")
    assert name in listing.stdout and "Stopped" in listing.stdout
    assert len(namespaces_of(name)) >= 5  # nodes, host, switch and pods outlive the daemon
    down = run_cli("down", "--name", name)
    assert down.code == 0, down.stderr
    assert leftovers(name, processes) == []


def test_bad_input_gives_one_line_and_exit_2(down_on_exit, tmp_path: Path) -> None:
    name = unique_cluster_name("bi")
    down_on_exit(name)
    assert run_cli("up", "--name", name).code == 0
    # A pod that names its node skips the scheduler, even onto the tainted control plane.
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: pinned}\nspec:\n  nodeName: control-plane\n"
                      "  containers: [{name: c, image: netk8s/echo}]\n")
    assert run_cli("--cluster", name, "apply", "-f", str(pinned)).code == 0
    cluster = Cluster.attach(name)
    cluster.wait_ready("pod", "pinned", timeout=60)
    pod = cluster.get("pod", "pinned")
    assert pod["spec"]["nodeName"] == "control-plane" and pod["status"]["podIP"].startswith("10.244.")
    ran = cluster.exec("pinned", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], check=True)
    assert pod["status"]["podIP"] + "/24" in ran.stdout

    missing = run_cli("--cluster", name, "exec", "nope", "--", "true")
    assert missing.code == 2
    assert missing.stderr.strip() == 'error: pods "nope" not found in namespace "default"'
    unknown_node = run_cli("--cluster", name, "node", "exec", "worker9", "--", "true")
    assert unknown_node.code == 2 and unknown_node.stderr.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {ports: [{port: 80}]}\n---\n"
                   "apiVersion: v1\nkind: Servise\nmetadata: {name: typo}\n")
    applied = run_cli("--cluster", name, "apply", "-f", str(bad))
    assert applied.code == 2 and applied.stderr.count("\n") == 1
    assert 'no matches for kind "Servise" in version "v1"' in applied.stderr
    # Nothing from the file was applied (validation happens before any change).
    assert run_cli("--cluster", name, "get", "svc", "ok").code == 2
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {ports: [{port: 80}]}\n---\n"
                       "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: 0}]}\n")
    server_side = run_cli("--cluster", name, "apply", "-f", str(invalid))
    assert server_side.code == 2 and server_side.stderr.count("\n") == 1
    assert "spec.ports[0].port: Invalid value: 0" in server_side.stderr
    assert run_cli("--cluster", name, "get", "svc", "good").code == 2  # all-or-nothing
