"""Pods on a running cluster behave as the kubelet makes them behave: probes kill and gate,
containers restart with the crash-loop back-off, init containers run first and in order,
containers of a pod share localhost, each pod has its hostname, hosts and resolv.conf,
service environment variables, hostPorts reach pods through the node's address, and
memory limits are enforced (or reported as not enforceable)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from netk8s.api import meta, printers
from netk8s.cluster.api import Cluster
from netk8s.cluster.naming import container_log_path
from netk8s.kubelet import cgroups
from netk8s.testing.helpers import run_cli, wait_for
from netk8s.testing.plugin import unique_cluster_name


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.up(name=unique_cluster_name("pd"))
    try:
        yield c
    finally:
        c.down()


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory pod processes (host processes) and the test both see."""
    tmp_path.chmod(0o777)
    return tmp_path


def pod(name: str, containers: list[dict], **spec: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"test": name}},
            "spec": {"containers": containers, "terminationGracePeriodSeconds": 2, **spec}}


def sleeper(name: str, script: str = "", **extra: Any) -> dict:
    return {"name": name, "image": "busybox", "command": ["sh", "-c", f"{script}\nexec sleep infinity"], **extra}


def get(cluster: Cluster, name: str) -> dict:
    return cluster.get("pod", name)


def wait_pod(cluster: Cluster, name: str, predicate: Callable[[dict], Any], timeout: float = 30,
             what: str = "") -> dict:
    def check() -> dict | None:
        obj = get(cluster, name)
        return obj if predicate(obj) else None
    try:
        return wait_for(check, timeout, 0.1, what or f"pod {name}")
    except TimeoutError:
        raise AssertionError(f"{what}: pod {name} status is {json.dumps(get(cluster, name).get('status'))}") from None


def status_text(obj: dict) -> str:
    """The STATUS column kubectl prints (the server's table uses the same function)."""
    return printers.pod_status_text(obj)[0]


def cstatus(obj: dict, container: str, group: str = "containerStatuses") -> dict:
    for cs in (obj.get("status") or {}).get(group) or []:
        if cs["name"] == container:
            return cs
    return {}


def log_of(cluster: Cluster, obj: dict, container: str, restart: int = 0) -> str:
    path = container_log_path(cluster.state.logs_dir, obj, container, restart)
    return path.read_text() if path.exists() else ""


def wait_log(cluster: Cluster, name: str, container: str, needle: str, timeout: float = 20) -> str:
    def check() -> str | None:
        text = log_of(cluster, get(cluster, name), container)
        return text if needle in text else None
    try:
        return wait_for(check, timeout, 0.1, f"{needle!r} in the log of {name}/{container}")
    except TimeoutError:
        raise AssertionError(f"log of {name}/{container}: {log_of(cluster, get(cluster, name), container)!r}") from None


def events_of(cluster: Cluster, name: str) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for e in cluster.list("events", "default")
            if e["involvedObject"].get("name") == name]


def wait_event(cluster: Cluster, name: str, reason: str, timeout: float = 20) -> list[tuple[str, str, str]]:
    try:
        return wait_for(lambda: [e for e in events_of(cluster, name) if e[1] == reason], timeout, 0.1,
                        f"event {reason} on {name}")
    except TimeoutError:
        raise AssertionError(f"no {reason} event on {name}: {events_of(cluster, name)}") from None


def running(obj: dict) -> bool:
    return obj.get("status", {}).get("phase") == "Running" and meta.condition_true(obj, "Ready")


# -- probes and restarts ---------------------------------------------------------------------------

def test_failed_liveness_probe_kills_and_restarts_the_container(cluster: Cluster, scratch: Path) -> None:
    healthy = scratch / "healthy"
    healthy.touch()
    cluster.apply(pod("live", [sleeper("app", livenessProbe={
        "exec": {"command": ["test", "-f", str(healthy)]}, "periodSeconds": 1, "failureThreshold": 2})]))
    first = wait_pod(cluster, "live", running, what="live running")
    first_id = cstatus(first, "app")["containerID"]
    healthy.unlink()
    after = wait_pod(cluster, "live", lambda p: cstatus(p, "app").get("restartCount") == 1
                     and "running" in cstatus(p, "app").get("state", {}), what="restarted once")
    cs = cstatus(after, "app")
    assert cs["containerID"] != first_id
    last = cs["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (143, "Error")  # SIGTERM, as a runtime reports it
    events = events_of(cluster, "live")
    assert ("Warning", "Unhealthy", "Liveness probe failed: ") in events
    assert ("Normal", "Killing", "Container app failed liveness probe, will be restarted") in events
    # kubectl's view: RESTARTS counts it.
    table = run_cli("--cluster", cluster.name, "get", "pods", "live")
    assert table.code == 0, table.stderr
    row = table.stdout.splitlines()[1].split()
    assert row[0] == "live" and row[3] == "1", table.stdout
    healthy.touch()  # stays up from now on
    time.sleep(2.5)
    assert cstatus(get(cluster, "live"), "app")["restartCount"] == 1


def test_readiness_probe_moves_the_pod_in_and_out_of_its_endpointslice(cluster: Cluster, scratch: Path) -> None:
    ready = scratch / "ready"
    ready.touch()
    cluster.apply([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rd"},
         "spec": {"selector": {"test": "rd"}, "ports": [{"port": 80, "targetPort": 8080}]}},
        pod("rd", [{"name": "echo", "image": "netk8s/echo", "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"exec": {"command": ["test", "-f", str(ready)]}, "periodSeconds": 1,
                                       "failureThreshold": 1}}]),
    ])
    ip = wait_pod(cluster, "rd", running, what="rd ready")["status"]["podIP"]

    def endpoint_ready() -> bool | None:
        for sl in cluster.list("endpointslices", "default", "kubernetes.io/service-name=rd"):
            for ep in sl.get("endpoints") or []:
                if ip in ep.get("addresses", []):
                    return bool(ep.get("conditions", {}).get("ready"))
        return None

    wait_for(lambda: endpoint_ready() is True, 20, what="ready endpoint")
    ready.unlink()
    wait_pod(cluster, "rd", lambda p: not meta.condition_true(p, "Ready"), what="not ready")
    wait_for(lambda: endpoint_ready() is not True, 20, what="endpoint not ready")
    assert status_text(get(cluster, "rd")) == "Running"
    assert cstatus(get(cluster, "rd"), "echo")["restartCount"] == 0  # readiness never restarts
    ready.touch()
    wait_for(lambda: endpoint_ready() is True, 20, what="ready endpoint again")


def test_startup_probe_gates_liveness(cluster: Cluster, scratch: Path) -> None:
    started = scratch / "started"
    cluster.apply(pod("slow", [sleeper("app", startupProbe={
        "exec": {"command": ["test", "-f", str(started)]}, "periodSeconds": 1, "failureThreshold": 30},
        livenessProbe={"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1})]))
    wait_pod(cluster, "slow", lambda p: "running" in cstatus(p, "app").get("state", {}), what="running")
    time.sleep(2.5)  # the failing liveness probe must not run before the startup probe passed
    obj = get(cluster, "slow")
    assert cstatus(obj, "app")["restartCount"] == 0 and cstatus(obj, "app")["started"] is False
    assert not meta.condition_true(obj, "Ready")
    started.touch()
    wait_pod(cluster, "slow", lambda p: cstatus(p, "app").get("restartCount", 0) >= 1, what="liveness kill")


def test_crash_loop_back_off(cluster: Cluster) -> None:
    cluster.apply(pod("crash", [{"name": "c", "image": "busybox", "command": ["sh", "-c", "echo boom; exit 3"]}]))
    obj = wait_pod(cluster, "crash", lambda p: cstatus(p, "c").get("state", {}).get("waiting", {}).get("reason")
                   == "CrashLoopBackOff", what="CrashLoopBackOff")
    cs = cstatus(obj, "c")
    # The first restart is immediate; the second exit starts a 10 s back-off.
    assert cs["restartCount"] == 1
    uid = obj["metadata"]["uid"]
    assert cs["state"]["waiting"]["message"] == \
        f"back-off 10s restarting failed container=c pod=crash_default({uid})"
    assert (cs["lastState"]["terminated"]["exitCode"], cs["lastState"]["terminated"]["reason"]) == (3, "Error")
    assert obj["status"]["phase"] == "Running" and status_text(obj) == "CrashLoopBackOff"
    assert any(e[1] == "BackOff" and e[2] == f"Back-off restarting failed container c in pod crash_default({uid})"
               for e in events_of(cluster, "crash"))
    assert "boom" in log_of(cluster, obj, "c", 1)
    time.sleep(3)
    assert cstatus(get(cluster, "crash"), "c")["restartCount"] == 1  # still backing off


@pytest.mark.parametrize("policy,code,phase,reason", [("Never", 0, "Succeeded", "Completed"),
                                                      ("Never", 2, "Failed", "Error"),
                                                      ("OnFailure", 0, "Succeeded", "Completed")])
def test_restart_policy_decides_the_final_phase(cluster: Cluster, policy: str, code: int, phase: str,
                                               reason: str) -> None:
    name = f"done-{policy.lower()}-{code}"
    cluster.apply(pod(name, [{"name": "c", "image": "busybox", "command": ["sh", "-c", f"exit {code}"]}],
                      restartPolicy=policy))
    obj = wait_pod(cluster, name, lambda p: p["status"].get("phase") == phase, what=phase)
    term = cstatus(obj, "c")["state"]["terminated"]
    assert (term["exitCode"], term["reason"], cstatus(obj, "c")["restartCount"]) == (code, reason, 0)
    assert status_text(obj) == reason
    cond = meta.get_condition(obj, "Ready") or {}
    expected_reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
    assert (cond.get("status"), cond.get("reason")) == ("False", expected_reason)


# -- init containers ---------------------------------------------------------------------------------

def test_init_containers_run_in_order_before_the_app(cluster: Cluster, scratch: Path) -> None:
    trail = scratch / "trail"
    gate = scratch / "gate"
    cluster.apply(pod("init", [sleeper("app", f"echo app >> {trail}")], initContainers=[
        {"name": "first", "image": "busybox", "command": ["sh", "-c", f"echo first >> {trail}; sleep 0.3"]},
        {"name": "second", "image": "busybox",
         "command": ["sh", "-c", f"while [ ! -f {gate} ]; do sleep 0.1; done; echo second >> {trail}"]},
    ]))
    waiting = wait_pod(cluster, "init", lambda p: "running" in cstatus(p, "second", "initContainerStatuses")
                       .get("state", {}), what="second init container running")
    assert status_text(waiting) == "Init:1/2"
    assert waiting["status"]["phase"] == "Pending"
    assert cstatus(waiting, "app")["state"]["waiting"]["reason"] == "PodInitializing"
    cond = meta.get_condition(waiting, "Initialized") or {}
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False", "ContainersNotInitialized", "containers with incomplete status: [second]")
    gate.touch()
    done = wait_pod(cluster, "init", running, what="app running")
    wait_for(lambda: trail.exists() and trail.read_text().count("\n") == 3, 10, what="three lines")
    assert trail.read_text().split() == ["first", "second", "app"]
    for name in ("first", "second"):
        term = cstatus(done, name, "initContainerStatuses")["state"]["terminated"]
        assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert meta.condition_true(done, "Initialized")


def test_failing_init_container(cluster: Cluster) -> None:
    failing = [{"name": "setup", "image": "busybox", "command": ["sh", "-c", "exit 1"]}]
    cluster.apply([pod("init-never", [sleeper("app")], initContainers=failing, restartPolicy="Never"),
                   pod("init-always", [sleeper("app")], initContainers=failing)])
    never = wait_pod(cluster, "init-never", lambda p: p["status"].get("phase") == "Failed", what="Failed")
    assert status_text(never) == "Init:Error"
    assert cstatus(never, "app")["state"]["waiting"]["reason"] == "PodInitializing"
    looping = wait_pod(cluster, "init-always", lambda p: status_text(p) == "Init:CrashLoopBackOff",
                       what="Init:CrashLoopBackOff")
    assert looping["status"]["phase"] == "Pending"
    assert cstatus(looping, "setup", "initContainerStatuses")["restartCount"] == 1


# -- sharing and identity ---------------------------------------------------------------------------

def test_containers_of_a_pod_share_localhost(cluster: Cluster) -> None:
    client = sleeper("client", "for i in $(seq 100); do curl -s -m 1 http://127.0.0.1:8080/ && break; "
                               "sleep 0.1; done; echo")
    cluster.apply(pod("duo", [{"name": "server", "image": "netk8s/echo", "ports": [{"containerPort": 8080}]},
                              client]))
    obj = wait_pod(cluster, "duo", running)
    answer = json.loads(wait_log(cluster, "duo", "client", "podIP").strip().splitlines()[0])
    assert answer["pod"] == "duo" and answer["client"].startswith("127.0.0.1:")
    assert answer["podIP"] == obj["status"]["podIP"]


def test_pod_hostname_hosts_and_resolv_conf(cluster: Cluster) -> None:
    script = "echo HOSTNAME=$(hostname); cat /etc/hosts /etc/resolv.conf; echo END"
    cluster.apply([
        pod("ident", [sleeper("a", script), sleeper("b", "echo HOSTNAME=$(hostname); echo END")],
            hostname="web-0", subdomain="web", hostAliases=[{"ip": "10.1.2.3", "hostnames": ["db", "db.local"]}]),
        pod("dnsnone", [sleeper("a", "cat /etc/resolv.conf; echo END")], dnsPolicy="None",
            dnsConfig={"nameservers": ["192.0.2.53"], "searches": ["example.test"],
                       "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}),
        pod("hostnet", [sleeper("a", "echo HOSTNAME=$(hostname); head -1 /etc/hosts; cat /etc/resolv.conf; echo END")],
            hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"),
    ])
    ip = wait_pod(cluster, "ident", running)["status"]["podIP"]
    text = wait_log(cluster, "ident", "a", "END")
    assert "HOSTNAME=web-0\n" in text
    assert f"{ip}\tweb-0.web.default.svc.cluster.local\tweb-0\n" in text
    assert "127.0.0.1\tlocalhost\n" in text and "10.1.2.3\tdb\n10.1.2.3\tdb.local\n" in text
    assert ("search default.svc.cluster.local svc.cluster.local cluster.local" in text
            and "nameserver 10.96.0.10\n" in text and "options ndots:5\n" in text)
    assert "HOSTNAME=web-0\n" in wait_log(cluster, "ident", "b", "END")  # one UTS namespace per pod
    wait_pod(cluster, "dnsnone", running)
    assert wait_log(cluster, "dnsnone", "a", "END") == \
        "search example.test\nnameserver 192.0.2.53\noptions ndots:2 edns0\nEND\n"
    node = wait_pod(cluster, "hostnet", running)["spec"]["nodeName"]
    text = wait_log(cluster, "hostnet", "a", "END")
    assert f"HOSTNAME={node}\n" in text
    assert "# Kubernetes-managed hosts file (host network).\n" in text
    assert "nameserver 10.96.0.10\n" in text


def test_service_environment_variables(cluster: Cluster) -> None:
    cluster.apply([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "back-end"},
         "spec": {"selector": {"app": "none"}, "ports": [{"name": "http", "port": 8080, "targetPort": 80},
                                                          {"name": "dns", "port": 53, "protocol": "UDP"}]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
         "data": {"MODE": "fast", "LEVEL": "3"}},
    ])
    svc_ip = cluster.get("service", "back-end")["spec"]["clusterIP"]
    env_dump = "env | sort; echo END"
    cluster.apply([
        pod("envs", [sleeper("a", env_dump, envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                             env=[{"name": "URL", "value": "http://$(BACK_END_SERVICE_HOST):$(BACK_END_SERVICE_PORT)"},
                                  {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                                                      "key": "LEVEL"}}},
                                  {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])]),
        pod("nolinks", [sleeper("a", env_dump)], enableServiceLinks=False),
    ])
    obj = wait_pod(cluster, "envs", running)
    env = dict(line.split("=", 1) for line in wait_log(cluster, "envs", "a", "END").splitlines() if "=" in line)
    expected = {
        "BACK_END_SERVICE_HOST": svc_ip, "BACK_END_SERVICE_PORT": "8080", "BACK_END_SERVICE_PORT_HTTP": "8080",
        "BACK_END_SERVICE_PORT_DNS": "53", "BACK_END_PORT": f"tcp://{svc_ip}:8080",
        "BACK_END_PORT_8080_TCP": f"tcp://{svc_ip}:8080", "BACK_END_PORT_8080_TCP_PROTO": "tcp",
        "BACK_END_PORT_8080_TCP_PORT": "8080", "BACK_END_PORT_8080_TCP_ADDR": svc_ip,
        "BACK_END_PORT_53_UDP": f"udp://{svc_ip}:53", "BACK_END_PORT_53_UDP_PROTO": "udp",
        "CFG_MODE": "fast", "CFG_LEVEL": "3", "LEVEL": "3", "URL": f"http://{svc_ip}:8080",
        "NODE": obj["spec"]["nodeName"], "HOSTNAME": "envs",
    }
    assert {k: env.get(k) for k in expected} == expected
    has_kubernetes = any(meta.name_of(s) == "kubernetes" for s in cluster.list("services", "default"))
    assert ("KUBERNETES_SERVICE_HOST" in env) == has_kubernetes
    wait_pod(cluster, "nolinks", running)
    plain = wait_log(cluster, "nolinks", "a", "END")
    assert "BACK_END_" not in plain


def test_missing_configmap_is_a_container_config_error(cluster: Cluster) -> None:
    cluster.apply(pod("nocm", [sleeper("a", env=[{"name": "X", "valueFrom": {
        "configMapKeyRef": {"name": "absent", "key": "k"}}}])]))
    obj = wait_pod(cluster, "nocm", lambda p: cstatus(p, "a").get("state", {}).get("waiting", {}).get("reason")
                   == "CreateContainerConfigError")
    assert cstatus(obj, "a")["state"]["waiting"]["message"] == 'configmap "absent" not found'
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "absent"}, "data": {"k": "v"}})
    wait_pod(cluster, "nocm", running, what="starts once the ConfigMap exists")


# -- hostPort -------------------------------------------------------------------------------------------

def test_host_port_reaches_the_pod_through_the_node_address(cluster: Cluster) -> None:
    pinned = {"nodeSelector": {"kubernetes.io/hostname": "worker"}}
    cluster.apply(pod("hp", [{"name": "echo", "image": "netk8s/echo",
                              "ports": [{"containerPort": 8080, "hostPort": 30088}]}], **pinned))
    obj = wait_pod(cluster, "hp", running)
    node_ip = obj["status"]["hostIP"]
    client_ip = cluster.host("client").exec(["ip", "-4", "-o", "addr", "show"]).stdout
    reply = wait_for(lambda: cluster.host("client").exec(
        ["curl", "-s", "-m", "2", f"http://{node_ip}:30088/"]).stdout, 15, 0.2, "hostPort answer")
    answer = json.loads(reply)
    assert answer["pod"] == "hp" and answer["port"] == 8080
    assert answer["client"].split(":")[0] in client_ip  # DNAT only: the client's own address
    nat = cluster.node("worker").exec(["iptables-save", "-t", "nat"]).stdout
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT" in nat
    assert f"-j DNAT --to-destination {obj['status']['podIP']}:8080" in nat

    # The same hostPort twice on one node: the second pod is rejected, as the kubelet's NodePorts check does.
    cluster.apply(pod("hp2", [{"name": "echo", "image": "netk8s/echo",
                               "ports": [{"containerPort": 9090, "hostPort": 30088}]}], **pinned))
    second = wait_pod(cluster, "hp2", lambda p: p["status"].get("phase") == "Failed", what="rejected")
    assert second["status"]["reason"] == "NodePorts"
    assert status_text(second) == "NodePorts"
    assert ("Warning", "NodePorts",
            "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports") \
        in wait_event(cluster, "hp2", "NodePorts")

    cluster.delete("pod", "hp")
    wait_for(lambda: "CNI-DN-" not in cluster.node("worker").exec(["iptables-save", "-t", "nat"]).stdout, 20,
             what="hostPort rules removed")


# -- limits ---------------------------------------------------------------------------------------------

def test_memory_limit_is_enforced_or_reported(cluster: Cluster) -> None:
    hog = {"name": "hog", "image": "busybox", "resources": {"limits": {"memory": "32Mi"}},
           "command": ["python3", "-c", "import time\nx = bytearray(256 * 1024 * 1024)\nx[::4096] = b'x' * "
                                        "len(x[::4096])\ntime.sleep(3600)"]}
    cluster.apply(pod("hog", [hog], restartPolicy="Never"))
    support = cgroups.detect()
    if support.available:
        obj = wait_pod(cluster, "hog", lambda p: p["status"].get("phase") == "Failed", what="OOM kill")
        term = cstatus(obj, "hog")["state"]["terminated"]
        assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137)
    else:
        events = wait_event(cluster, "hog", "ResourceLimitsUnsupported")
        assert events[0][:2] == ("Warning", "ResourceLimitsUnsupported")
        assert events[0][2] == f"memory/cpu limits are not enforced: {support.reason}"
        assert wait_pod(cluster, "hog", lambda p: "running" in cstatus(p, "hog").get("state", {}))


def test_deleting_pods_leaves_no_sandbox_behind(cluster: Cluster) -> None:
    for obj in cluster.list("pods", "default"):
        cluster.delete("pod", meta.name_of(obj))
    wait_for(lambda: not cluster.list("pods", "default"), 60, what="pods gone")
    leftovers = [n for n in Path("/run/netns").iterdir() if n.name.startswith(f"nk-{cluster.name}-default-")]
    assert leftovers == []
    etc = Path("/etc/netns")
    assert not etc.exists() or not [d for d in etc.iterdir() if d.name.startswith(f"nk-{cluster.name}-default-")]
    assert not [w for _, _, w in cluster.state.pids() if w.startswith(f"sandbox nk-{cluster.name}-default-")]
