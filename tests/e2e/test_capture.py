"""Captures on a running cluster: ``Cluster.capture`` in a client pod and at the backend shows the
DNAT of a ClusterIP connection on the wire; ``netk8s capture`` prints packets live, writes pcap files,
records its tcpdump with the cluster while it runs, and refuses bad input with exit code 2."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.api import meta
from netk8s.capture import read_pcap
from netk8s.cluster.api import Cluster
from netk8s.kernel import procs
from netk8s.testing.helpers import run_cli, wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(netk8s_cluster: Cluster) -> Iterator[Cluster]:
    netk8s_cluster.apply(REPO / "topologies" / "apps" / "echo.yaml")
    netk8s_cluster.wait_ready("deployment", "echo", timeout=60)
    netk8s_cluster.wait_ready("pod", "client", timeout=60)
    netk8s_cluster.wait_service("echo", timeout=30)
    yield netk8s_cluster


def test_clusterip_connection_before_and_after_dnat(cluster: Cluster) -> None:
    ip = cluster.get("service", "echo")["spec"]["clusterIP"]
    client_ip = cluster.get("pod", "client")["status"]["podIP"]
    backend = cluster.list("pods", "default", "app=echo")[0]
    backend_ip = backend["status"]["podIP"]
    with cluster.capture("client", "tcp") as at_client, \
            cluster.capture(f"pod/{meta.name_of(backend)}", "tcp port 8080", interface="eth0") as at_backend:
        # Several tries: kube-proxy picks a backend at random; stop once ours answered.
        wait_for(lambda: backend_ip in cluster.exec("client", ["curl", "-s", "-m", "2", f"http://{ip}/"]).stdout,
                 timeout=20, interval=0.1, what="the chosen backend to answer")
        at_backend.wait_for(flags="S", timeout=5)
    # In the client pod the SYN still goes to the ClusterIP; at the backend it arrives DNATed, with
    # the client's own address as source (no SNAT between pods).
    assert at_client.select(flags="S", src=client_ip, dst=ip, dport=80)
    assert not at_client.select(dst=backend_ip)
    assert at_backend.select(flags="S", src=client_ip, dst=backend_ip, dport=8080)  # (other SYNs: probes)
    assert not at_backend.select(dst=ip)
    assert any(f"IP {client_ip}." in line and f"> {backend_ip}.8080: Flags [S]" in line for line in at_backend.lines)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "netk8s", *args]


def start_cli_capture(cluster: Cluster, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(cli("--cluster", cluster.name, "capture", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], 30)  # bounded: the CLI says so once tcpdump listens
    if not ready:
        proc.kill()
        raise AssertionError("netk8s capture printed nothing within 30s")
    first = proc.stderr.readline()  # "capturing in ...": tcpdump is listening
    assert first.startswith("capturing in "), first + proc.stderr.read()
    return proc


def test_cli_prints_packets_live_and_stops_after_count(cluster: Cluster) -> None:
    proc = start_cli_capture(cluster, "client", "-c", "2", "icmp")
    try:
        target = cluster.get("pod", "client")["spec"]["nodeName"]
        node_ip = str(cluster.topology.primary_address(target))
        recorded = [what for _, _, what in cluster.state.pids() if what == "tcpdump in pod default/client"]
        assert recorded, cluster.state.pids()
        cluster.exec("client", ["ping", "-c", "1", "-W", "2", node_ip], check=True)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and "ICMP echo request" in lines[0] and "ICMP echo reply" in lines[1], out
    assert err.strip().endswith("2 packets captured"), err
    assert not [what for _, _, what in cluster.state.pids() if what.startswith("tcpdump")]  # forgotten again


def test_cli_writes_a_pcap_for_a_duration(cluster: Cluster, tmp_path: Path) -> None:
    target = tmp_path / "client.pcap"
    started = time.monotonic()
    proc = start_cli_capture(cluster, "host/client", "-w", str(target), "--duration", "3", "icmp")
    try:
        pod_ip = cluster.get("pod", "client")["status"]["podIP"]
        cluster.host("client").exec(["ping", "-c", "1", "-W", "2", pod_ip], check=True)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out == "", err
    assert time.monotonic() - started >= 3
    assert [(p.protocol, p.icmp_type) for p in read_pcap(target)] == [("ICMP", 8), ("ICMP", 0)]
    assert "2 packets captured" in err


@pytest.mark.parametrize("args,message", [
    (["nosuch"], 'pods "nosuch" not found in namespace "default"'),
    (["rack/r1"], "target 'rack/r1': give a pod name"),
    (["node/nosuch"], 'node "nosuch" not found'),
    (["client", "tcp", "port"], "capture filter 'tcp port': tcpdump cannot parse it"),
    (["client", "-i", "eth7"], "capture interface 'eth7': no such interface in pod default/client"),
    (["client", "--count", "-1"], "--count -1 must be 0 (no limit) or more"),
    (["client", "--bogus"], "capture: unknown option --bogus"),
])
def test_cli_refuses_bad_input_with_one_line(cluster: Cluster, args: list[str], message: str) -> None:
    result = run_cli("--cluster", cluster.name, "capture", *args, timeout=60)
    assert result.code == 2, (result.stdout, result.stderr)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not [pid for pid, started, what in cluster.state.pids()
                if what.startswith("tcpdump") and procs.is_running(pid, started)]
