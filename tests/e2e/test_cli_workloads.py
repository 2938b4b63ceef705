"""``netk8s scale``, ``rollout status`` and ``describe`` on a running cluster, as kubectl users type them
(``describe`` compared with kubectl's own output when kubectl is installed)."""

from __future__ import annotations

import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.cluster.api import Cluster
from netk8s.testing.helpers import CliResult, run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(netk8s_cluster: Cluster) -> Iterator[Cluster]:
    netk8s_cluster.apply(REPO / "topologies" / "apps" / "echo.yaml")
    yield netk8s_cluster


def netk8s(cluster: Cluster, *args: str) -> CliResult:
    return run_cli("--cluster", cluster.name, *args, timeout=120)


def test_rollout_status_follows_a_scale_to_the_end(cluster: Cluster) -> None:
    first = netk8s(cluster, "rollout", "status", "deployment/echo", "--timeout", "60")
    assert first.code == 0, first.stderr
    assert first.stdout.splitlines()[-1] == 'deployment "echo" successfully rolled out'
    scaled = netk8s(cluster, "scale", "deployment", "echo", "--replicas", "5")
    assert (scaled.code, scaled.stdout) == (0, "deployment.apps/echo scaled\n"), scaled.stderr
    followed = netk8s(cluster, "rollout", "status", "deploy/echo", "--timeout", "60")
    assert followed.code == 0, followed.stderr
    lines = followed.stdout.splitlines()
    assert lines[-1] == 'deployment "echo" successfully rolled out'
    assert all(line.startswith(('Waiting for deployment "echo" rollout to finish: ', "Waiting for deployment spec"))
               for line in lines[:-1]), lines
    assert cluster.get("deployment", "echo")["status"]["availableReplicas"] == 5
    once = netk8s(cluster, "rollout", "status", "deployment/echo", "--watch=false")
    assert once.stdout == 'deployment "echo" successfully rolled out\n'


def test_scale_precondition_and_replicasets(cluster: Cluster) -> None:
    stale = netk8s(cluster, "scale", "deployment/echo", "--replicas", "1", "--current-replicas", "7")
    assert stale.code == 1 and "Expected replicas to be 7, was " in stale.stderr
    down = netk8s(cluster, "scale", "deployment/echo", "--replicas", "2",
                  "--current-replicas", str(cluster.get("deployment", "echo")["spec"]["replicas"]))
    assert down.code == 0, down.stderr
    assert netk8s(cluster, "rollout", "status", "deployment/echo", "--timeout", "60").code == 0
    pods = cluster.list("pods", "default", "app=echo")
    assert len([p for p in pods if not p["metadata"].get("deletionTimestamp")]) == 2  # others are Terminating


@pytest.mark.parametrize("args,code,message", [
    (["scale", "pod/client", "--replicas", "2"], 2, "scale: 'pod' is not supported; use deployment or replicaset"),
    (["scale", "deployment/echo"], 2, "the following arguments are required: --replicas"),
    (["scale", "deployment/echo", "--replicas", "-3"], 2, "--replicas -3 must be 0 or more"),
    (["rollout", "status", "deployment/nosuch"], 2, 'deployments.apps "nosuch" not found'),
    (["rollout", "status", "rs/echo"], 2, "rollout status: 'rs' is not supported; use deployment"),
    (["rollout", "status", "deployment/echo", "--watch=maybe"], 2, "'maybe' is not true or false"),
])
def test_bad_input_is_one_line_and_exit_2(cluster: Cluster, args: list[str], code: int, message: str) -> None:
    result = netk8s(cluster, *args)
    assert result.code == code, (result.stdout, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def settled(cluster: Cluster) -> None:
    """No pod of the earlier scaling is still going away (describe output would move under us)."""
    cluster.wait_ready("pod", "client", timeout=60)
    cluster.wait_ready("deployment", "echo", timeout=60)
    cluster.wait_for(lambda: not [p for p in cluster.list("pods") if p["metadata"].get("deletionTimestamp")],
                     timeout=60, what="terminating pods to go")


def test_describe_gathers_events_endpoints_and_replicasets(cluster: Cluster) -> None:
    settled(cluster)
    pod = netk8s(cluster, "describe", "pod", "client")
    assert pod.code == 0, pod.stderr
    assert "Service Account:  default" in pod.stdout and "Status:           Running" in pod.stdout
    assert "Successfully assigned default/client to" in pod.stdout  # the scheduler's event
    service = netk8s(cluster, "describe", "service/echo")
    ips = sorted(p["status"]["podIP"] for p in cluster.list("pods", "default", "app=echo")
                 if not p["metadata"].get("deletionTimestamp"))
    endpoints = next(line for line in service.stdout.splitlines() if line.startswith("Endpoints:"))
    assert sorted(e.rsplit(":", 1)[0] for e in endpoints.split()[1].split(",")) == ips
    deployment = netk8s(cluster, "describe", "deploy", "echo").stdout
    assert "NewReplicaSet:   echo-" in deployment and "ScalingReplicaSet" in deployment
    node = netk8s(cluster, "describe", "node", "worker").stdout
    assert "HolderIdentity:  worker" in node and "Non-terminated Pods:" in node
    missing = netk8s(cluster, "describe", "pod", "nosuch")
    assert missing.code == 2 and 'pods "nosuch" not found' in missing.stderr


def test_logs_follow_prints_new_lines_as_they_come(cluster: Cluster) -> None:
    settled(cluster)
    pod = cluster.list("pods", "default", "app=echo")[0]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    follow = subprocess.Popen([sys.executable, "-m", "netk8s", "--cluster", cluster.name, "logs", name, "-f",
                               "--tail", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)  # the stream is open
        cluster.exec("client", ["curl", "-s", "-m", "3", "-A", "follow-me", f"http://{ip}:8080/followed"], check=True)
        assert follow.stdout is not None
        seen: list[str] = []  # the readiness probe's GET /healthz lines come too
        deadline = time.monotonic() + 15
        while not any("GET /followed" in line for line in seen):
            ready, _, _ = select.select([follow.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"netk8s logs -f printed no GET /followed within 15s: {seen}"
            line = follow.stdout.readline()
            assert line, f"netk8s logs -f ended ({follow.wait(5)}): {seen}"
            seen.append(line)
        follow.send_signal(signal.SIGINT)
        assert follow.wait(10) == 0
    finally:
        if follow.poll() is None:
            follow.kill()


def test_get_several_types_at_once(cluster: Cluster) -> None:
    settled(cluster)
    both = netk8s(cluster, "get", "pods,svc")
    assert both.code == 0, both.stderr
    pods, services = both.stdout.split("\n\n")
    assert pods.startswith("NAME ") and "pod/client " in pods
    assert services.startswith("NAME ") and "service/echo " in services
    everything = netk8s(cluster, "get", "all", "-o", "name").stdout.split()
    assert "deployment.apps/echo" in everything and "pod/client" in everything and "service/echo" in everything
    assert any(name.startswith("replicaset.apps/echo-") for name in everything)


@pytest.mark.needs_kubectl
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: kubectl tests not run")
@pytest.mark.parametrize("args", [["get", "pods,svc"], ["get", "all", "-A"], ["get", "deploy,rs", "-o", "wide"]])
def test_get_several_types_matches_kubectl(cluster: Cluster, args: list[str]) -> None:
    settled(cluster)
    ours = netk8s(cluster, *args)
    theirs = subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True,
                            text=True, timeout=60)
    assert ours.code == 0 and theirs.returncode == 0, (ours.stderr, theirs.stderr)
    age = re.compile(r"\b\d+(s|m\d*s?|h\d*m?)\b")
    assert age.sub("AGE", ours.stdout) == age.sub("AGE", theirs.stdout)


@pytest.mark.needs_kubectl
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: kubectl tests not run")
@pytest.mark.parametrize("target", [["pod", "client"], ["service", "echo"], ["deployment", "echo"],
                                    ["node", "worker"], ["namespace", "default"], ["serviceaccount", "default"]])
def test_describe_matches_kubectl(cluster: Cluster, target: list[str]) -> None:
    settled(cluster)

    def masked(text: str) -> str:  # ages move on between the two runs
        return re.sub(r"\b\d+(s|m\d*s?|h\d*m?)\b", "AGE", text)
    ours = netk8s(cluster, "describe", *target)
    theirs = subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "describe", *target],
                            capture_output=True, text=True, timeout=60)
    assert ours.code == 0 and theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert masked(ours.stdout) == masked(theirs.stdout)
