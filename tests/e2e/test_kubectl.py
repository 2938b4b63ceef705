"""kubectl against a running netk8s cluster: the commands users type every day.

Needs kubectl on the machine; without it these tests are skipped and the run
says so in its summary (they are never silently passed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from netk8s.cluster.api import Cluster
from netk8s.testing.plugin import unique_cluster_name

KUBECTL = shutil.which("kubectl")
REPO = Path(__file__).resolve().parents[2]
APP = REPO / "topologies" / "apps" / "echo.yaml"

pytestmark = [pytest.mark.needs_kubectl,
              pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed: kubectl tests not run")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.up(name=unique_cluster_name("kc"))
    try:
        yield c
    finally:
        c.down()


def kubectl(cluster: Cluster, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True,
                            text=True, input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def test_apply_twice_creates_then_updates_in_place(cluster: Cluster) -> None:
    first = kubectl(cluster, "apply", "-f", str(APP))
    assert first.stdout.splitlines() == ["deployment.apps/echo created", "service/echo created", "pod/client created"]
    uid = kubectl(cluster, "get", "deployment", "echo", "-o", "jsonpath={.metadata.uid}").stdout
    docs = list(yaml.safe_load_all(APP.read_text()))
    docs[0]["spec"]["replicas"] = 2
    second = kubectl(cluster, "apply", "-f", "-", input=yaml.safe_dump_all(docs))
    assert second.stdout.splitlines() == ["deployment.apps/echo configured", "service/echo unchanged",
                                          "pod/client unchanged"]
    assert kubectl(cluster, "get", "deployment", "echo", "-o", "jsonpath={.metadata.uid}").stdout == uid
    assert kubectl(cluster, "get", "deployment", "echo", "-o", "jsonpath={.spec.replicas}").stdout == "2"


def test_rollout_status_and_scale(cluster: Cluster) -> None:
    out = kubectl(cluster, "rollout", "status", "deployment/echo", "--timeout=60s").stdout
    assert 'deployment "echo" successfully rolled out' in out
    assert kubectl(cluster, "scale", "deployment", "echo", "--replicas=3").stdout.strip() == \
        "deployment.apps/echo scaled"
    kubectl(cluster, "rollout", "status", "deployment/echo", "--timeout=60s")
    ready = kubectl(cluster, "get", "deployment", "echo", "-o", "jsonpath={.status.readyReplicas}").stdout
    assert ready == "3"


def test_rollout_undo_returns_to_the_previous_replicaset(cluster: Cluster) -> None:
    kubectl(cluster, "set", "image", "deployment/echo", "echo=netk8s/echo:v2")
    kubectl(cluster, "rollout", "status", "deployment/echo", "--timeout=60s")
    history = kubectl(cluster, "rollout", "history", "deployment/echo").stdout
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"]
    assert kubectl(cluster, "rollout", "undo", "deployment/echo").stdout.strip() == "deployment.apps/echo rolled back"
    kubectl(cluster, "rollout", "status", "deployment/echo", "--timeout=60s")
    image = kubectl(cluster, "get", "deployment", "echo", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
    assert image.stdout == "netk8s/echo"
    replicasets = kubectl(cluster, "get", "rs", "-l", "app=echo", "-o", "name").stdout.split()
    assert len(replicasets) == 2  # the first ReplicaSet was reused, not a third one made
    revisions = kubectl(cluster, "get", "deployment", "echo", "-o",
                        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}").stdout
    assert revisions == "3"


def test_api_resources_lists_what_is_served(cluster: Cluster) -> None:
    out = kubectl(cluster, "api-resources").stdout
    names = {line.split()[0] for line in out.splitlines()[1:]}
    assert {"pods", "services", "deployments", "replicasets", "endpointslices", "configmaps", "secrets",
            "namespaces", "nodes", "events", "endpoints", "networkpolicies", "leases", "serviceaccounts"} <= names
    assert kubectl(cluster, "explain", "deployment.spec.replicas").returncode == 0


def test_create_and_strict_field_validation(cluster: Cluster) -> None:
    assert kubectl(cluster, "create", "namespace", "kc-extra").stdout.strip() == "namespace/kc-extra created"
    assert kubectl(cluster, "create", "configmap", "settings", "-n", "kc-extra",
                   "--from-literal=mode=fast").stdout.strip() == "configmap/settings created"
    typo = ("apiVersion: v1\nkind: Service\nmetadata: {name: typo, namespace: kc-extra}\n"
            "spec: {ports: [{port: 80, targetPrt: 8080}]}\n")
    failed = kubectl(cluster, "apply", "-f", "-", input=typo, check=False)
    assert failed.returncode == 1
    assert 'strict decoding error: unknown field "spec.ports[0].targetPrt"' in failed.stderr
    kubectl(cluster, "delete", "namespace", "kc-extra")


def test_server_side_apply(cluster: Cluster) -> None:
    config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: '1', b: '2'}\n"
    first = kubectl(cluster, "apply", "--server-side", "-f", "-", input=config)
    assert first.stdout.strip() == "configmap/ssa serverside-applied"
    kubectl(cluster, "apply", "--server-side", "-f", "-", input=config.replace(", b: '2'", ""))
    data = json.loads(kubectl(cluster, "get", "configmap", "ssa", "-o", "jsonpath={.data}").stdout)
    assert data == {"a": "1"}  # the manager dropped b, so b is gone
    other = config.replace("a: '1', b: '2'", "a: '9'")
    conflict = kubectl(cluster, "apply", "--server-side", "--field-manager=other", "-f", "-", input=other,
                       check=False)
    assert conflict.returncode == 1
    assert 'Apply failed with 1 conflict: conflict with "kubectl": .data.a' in conflict.stderr
    kubectl(cluster, "apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", "-", input=other)
    assert kubectl(cluster, "get", "configmap", "ssa", "-o", "jsonpath={.data.a}").stdout == "9"


def test_get_wide_and_yaml(cluster: Cluster) -> None:
    cluster.wait_ready("pod", "client", timeout=60)
    wide = kubectl(cluster, "get", "pods", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                               "READINESS", "GATES"]
    client_row = next(line.split() for line in wide if line.startswith("client "))
    pod = cluster.get("pod", "client")
    assert client_row[1:3] == ["1/1", "Running"] and client_row[5] == pod["status"]["podIP"]
    assert client_row[6] == pod["spec"]["nodeName"]
    nodes = kubectl(cluster, "get", "nodes").stdout.splitlines()
    assert nodes[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert any(line.split()[:3] == ["control-plane", "Ready", "control-plane"] for line in nodes[1:])
    as_yaml = yaml.safe_load(kubectl(cluster, "get", "service", "echo", "-o", "yaml").stdout)
    assert as_yaml["kind"] == "Service" and as_yaml["spec"]["clusterIP"].startswith("10.96.")


def test_logs_and_describe(cluster: Cluster) -> None:
    cluster.wait_ready("deployment", "echo", timeout=60)
    cluster.wait_service("echo", timeout=30)
    ip = cluster.get("service", "echo")["spec"]["clusterIP"]
    answer = json.loads(cluster.exec("client", ["curl", "-s", "-m", "3", f"http://{ip}/"], check=True).stdout)
    logs = kubectl(cluster, "logs", answer["pod"]).stdout
    assert '"GET / HTTP/1.1" 200' in logs
    described = kubectl(cluster, "describe", "pod", answer["pod"]).stdout
    assert re.search(rf"^Name:\s+{answer['pod']}$", described, re.M), described
    assert re.search(rf"^IP:\s+{re.escape(answer['podIP'])}$", described, re.M), described
    assert re.search(r"^Service Account:\s+default$", described, re.M), described  # admission's default
    assert "Started container echo" in described and "Scheduled" in described


def test_get_watch_ends_after_a_change(cluster: Cluster) -> None:
    assert KUBECTL is not None
    watcher = subprocess.Popen([KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "get", "pods", "-l", "app=echo",
                                "--watch", "--output-watch-events"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        kubectl(cluster, "scale", "deployment", "echo", "--replicas=4")
        lines: list[str] = []
        deadline = time.monotonic() + 30
        assert watcher.stdout is not None
        os.set_blocking(watcher.stdout.fileno(), False)
        while time.monotonic() < deadline and not any(line.startswith("ADDED") for line in lines[4:]):
            chunk = watcher.stdout.readline()
            if chunk:
                lines.append(chunk)
            else:
                time.sleep(0.05)
        assert any(line.startswith("ADDED") for line in lines[4:]), lines
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=10)


def test_delete_waits_for_the_object_to_go(cluster: Cluster) -> None:
    out = kubectl(cluster, "delete", "pod", "client").stdout
    assert out.strip() == 'pod "client" deleted'
    missing = kubectl(cluster, "get", "pod", "client", check=False)
    assert missing.returncode == 1 and 'pods "client" not found' in missing.stderr
    assert kubectl(cluster, "delete", "deployment", "echo").stdout.strip() == 'deployment.apps "echo" deleted'
    assert kubectl(cluster, "get", "replicasets", "-o", "name").stdout.strip() == ""
