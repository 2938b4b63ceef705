"""Unit tests for netk8s.api.printers: kubectl 1.32 columns and tabwriter layout."""

from __future__ import annotations

import datetime as dt

import pytest

from netk8s.api.printers import format_label_selector, format_table, table

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def ts(seconds_ago: int) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(name: str, seconds_ago: int = 300, namespace: str = "default", **extra: object) -> dict:
    return {"name": name, "namespace": namespace, "creationTimestamp": ts(seconds_ago), **extra}


def running(ready: bool = True, restarts: int = 0, last_finished: str | None = None) -> dict:
    cs: dict = {"name": "c", "ready": ready, "restartCount": restarts,
                "state": {"running": {"startedAt": ts(100)}}}
    if last_finished:
        cs["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": last_finished}}
    return cs


def pod(name: str = "web-1", statuses: list | None = None, phase: str = "Running", n: int = 1,
        **status: object) -> dict:
    return {"kind": "Pod", "metadata": meta(name),
            "spec": {"nodeName": "worker1", "containers": [{"name": f"c{i}"} for i in range(n)]},
            "status": {"phase": phase, "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                       "containerStatuses": statuses if statuses is not None else [running()], **status}}


# --- Pod -----------------------------------------------------------------------------------

def test_pod_columns_running() -> None:
    headers, rows = table("Pod", [pod()], now=NOW)
    assert headers == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows == [["web-1", "1/1", "Running", "0", "5m"]]


def test_pod_ready_counts_only_ready_running_containers() -> None:
    p = pod(statuses=[running(True), running(False)], n=2)
    assert table("Pod", [p], now=NOW)[1][0][1] == "1/2"


@pytest.mark.parametrize("state,expected", [
    ({"waiting": {"reason": "CrashLoopBackOff"}}, "CrashLoopBackOff"),
    ({"waiting": {"reason": "ErrImagePull"}}, "ErrImagePull"),
    ({"waiting": {"reason": "ContainerCreating"}}, "ContainerCreating"),
    ({"terminated": {"reason": "OOMKilled", "exitCode": 137}}, "OOMKilled"),
    ({"terminated": {"exitCode": 3}}, "ExitCode:3"),
    ({"terminated": {"exitCode": 0, "signal": 9}}, "Signal:9"),
])
def test_pod_container_state_wins_over_phase(state: dict, expected: str) -> None:
    p = pod(statuses=[{"name": "c", "ready": False, "restartCount": 0, "state": state}])
    _, rows = table("Pod", [p], now=NOW)
    assert rows[0][2] == expected
    assert rows[0][1] == "0/1"


def test_pod_first_container_reason_wins() -> None:
    p = pod(n=2, statuses=[{"name": "a", "state": {"waiting": {"reason": "ErrImagePull"}}},
                           {"name": "b", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}])
    assert table("Pod", [p], now=NOW)[1][0][2] == "ErrImagePull"


def test_pod_terminating_and_pending_and_status_reason() -> None:
    deleting = pod()
    deleting["metadata"]["deletionTimestamp"] = ts(1)
    pending = pod(phase="Pending", statuses=[])
    evicted = pod(phase="Failed", statuses=[], reason="Evicted")
    succeeded_deleting = pod(phase="Succeeded", statuses=[])
    succeeded_deleting["metadata"]["deletionTimestamp"] = ts(1)
    rows = table("Pod", [deleting, pending, evicted, succeeded_deleting], now=NOW)[1]
    assert [r[2] for r in rows] == ["Terminating", "Pending", "Evicted", "Succeeded"]
    assert rows[1][1] == "0/1"


def test_pod_completed_with_running_container_reads_running_or_notready() -> None:
    statuses = [{"name": "a", "ready": True, "state": {"running": {}}},
                {"name": "b", "ready": False, "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]
    ready = pod(n=2, statuses=statuses, conditions=[{"type": "Ready", "status": "True"}])
    not_ready = pod(n=2, statuses=statuses, conditions=[{"type": "Ready", "status": "False"}])
    rows = table("Pod", [ready, not_ready], now=NOW)[1]
    assert [r[2] for r in rows] == ["Running", "NotReady"]


def test_pod_init_containers() -> None:
    p = pod(phase="Pending", statuses=[{"name": "c", "state": {"waiting": {"reason": "PodInitializing"}}}])
    p["spec"]["initContainers"] = [{"name": "i0"}, {"name": "i1"}]
    p["status"]["initContainerStatuses"] = [
        {"name": "i0", "state": {"terminated": {"exitCode": 0}}},
        {"name": "i1", "state": {"running": {}}, "restartCount": 2}]
    assert table("Pod", [p], now=NOW)[1][0][2:4] == ["Init:1/2", "2"]
    p["status"]["initContainerStatuses"][1]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    assert table("Pod", [p], now=NOW)[1][0][2] == "Init:CrashLoopBackOff"


def test_pod_restarts_with_last_restart_age() -> None:
    p = pod(n=2, statuses=[running(restarts=2, last_finished=ts(125)),
                           running(restarts=1, last_finished=ts(3600))])
    p2 = pod("no-last", statuses=[running(restarts=4)])
    rows = table("Pod", [p, p2], now=NOW)[1]
    assert rows[0][3] == "3 (2m5s ago)"
    assert rows[1][3] == "4"


def test_pod_wide_columns_and_none() -> None:
    bare = {"metadata": {"name": "lonely"}}
    gated = pod()
    gated["spec"]["readinessGates"] = [{"conditionType": "x/a"}, {"conditionType": "x/b"}]
    gated["status"]["conditions"] = [{"type": "x/a", "status": "True"}, {"type": "x/b", "status": "False"}]
    gated["status"]["nominatedNodeName"] = "worker2"
    headers, rows = table("Pod", [pod(), bare, gated], wide=True, now=NOW)
    assert headers[5:] == ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert rows[0][5:] == ["10.244.1.5", "worker1", "<none>", "<none>"]
    assert rows[1] == ["lonely", "0/0", "", "0", "<unknown>", "<none>", "<none>", "<none>", "<none>"]
    assert rows[2][5:] == ["10.244.1.5", "worker1", "worker2", "1/2"]


# --- Service -------------------------------------------------------------------------------

def svc(name: str, spec: dict, status: dict | None = None) -> dict:
    return {"metadata": meta(name, 7200), "spec": spec, "status": status or {}}


def test_services() -> None:
    objs = [
        svc("web", {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                    "selector": {"app": "web", "tier": "fe"},
                    "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}),
        svc("np", {"type": "NodePort", "clusterIPs": ["10.96.0.21"],
                   "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
        svc("lb", {"type": "LoadBalancer", "clusterIPs": ["10.96.0.22"],
                   "ports": [{"port": 80, "nodePort": 31000}]}),
        svc("lb2", {"type": "LoadBalancer", "clusterIPs": ["10.96.0.23"], "ports": [{"port": 443}]},
            {"loadBalancer": {"ingress": [{"ip": "172.18.255.201"}, {"ip": "172.18.255.200"}]}}),
        svc("ext", {"type": "ExternalName", "externalName": "example.com"}),
        svc("eip", {"type": "ClusterIP", "clusterIPs": ["10.96.0.24"], "externalIPs": ["192.0.2.1", "192.0.2.2"],
                    "ports": [{"port": 8080}]}),
        svc("headless", {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}),
    ]
    headers, rows = table("Service", objs, now=NOW)
    assert headers == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert rows == [
        ["web", "ClusterIP", "10.96.0.20", "<none>", "80/TCP,53/UDP", "120m"],
        ["np", "NodePort", "10.96.0.21", "<none>", "80:30080/TCP", "120m"],
        ["lb", "LoadBalancer", "10.96.0.22", "<pending>", "80:31000/TCP", "120m"],
        ["lb2", "LoadBalancer", "10.96.0.23", "172.18.255.20...", "443/TCP", "120m"],
        ["ext", "ExternalName", "<none>", "example.com", "<none>", "120m"],
        ["eip", "ClusterIP", "10.96.0.24", "192.0.2.1,192.0.2.2", "8080/TCP", "120m"],
        ["headless", "ClusterIP", "None", "<none>", "80/TCP", "120m"],
    ]
    headers, rows = table("Service", objs, wide=True, now=NOW)
    assert headers[-1] == "SELECTOR"
    assert rows[0][-1] == "app=web,tier=fe"
    assert rows[1][-1] == "<none>"
    # wide does not truncate the ingress list
    assert rows[3][3] == "172.18.255.200,172.18.255.201"


# --- Node ----------------------------------------------------------------------------------

def node(name: str, ready: str | None, labels: dict, unschedulable: bool = False) -> dict:
    conds = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conds.append({"type": "Ready", "status": ready})
    return {"metadata": {"name": name, "creationTimestamp": ts(3 * 86400 + 3600), "labels": labels},
            "spec": {"unschedulable": unschedulable},
            "status": {"conditions": conds,
                       "addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                     {"type": "Hostname", "address": name}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "netk8s",
                                    "kernelVersion": "6.1.0", "containerRuntimeVersion": ""}}}


def test_nodes() -> None:
    objs = [node("cp", "True", {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/etcd": ""}),
            node("w1", "False", {"kubernetes.io/role": "worker"}),
            node("w2", None, {}, unschedulable=True),
            node("w3", "Unknown", {}, unschedulable=True)]
    headers, rows = table("Node", objs, now=NOW)
    assert headers == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert rows == [["cp", "Ready", "control-plane,etcd", "3d1h", "v1.32.0"],
                    ["w1", "NotReady", "worker", "3d1h", "v1.32.0"],
                    ["w2", "Unknown,SchedulingDisabled", "<none>", "3d1h", "v1.32.0"],
                    ["w3", "NotReady,SchedulingDisabled", "<none>", "3d1h", "v1.32.0"]]
    headers, rows = table("Node", objs[:1], wide=True, now=NOW)
    assert headers[5:] == ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert rows[0][5:] == ["172.18.0.2", "<none>", "netk8s", "6.1.0", "<unknown>"]


# --- workloads -----------------------------------------------------------------------------

def workload(name: str, spec: dict, status: dict) -> dict:
    tmpl = {"spec": {"containers": [{"name": "web", "image": "netk8s/echo"},
                                    {"name": "side", "image": "busybox:1.36"}]}}
    return {"metadata": meta(name, 45), "spec": {"template": tmpl, **spec}, "status": status}


def test_deployments() -> None:
    d = workload("web", {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}},
                 {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2})
    fresh = {"metadata": meta("fresh", 45), "spec": {"replicas": 0}}
    headers, rows = table("Deployment", [d, fresh], now=NOW)
    assert headers == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows == [["web", "2/3", "3", "2", "45s"], ["fresh", "0/0", "0", "0", "45s"]]
    headers, rows = table("Deployment", [d, fresh], wide=True, now=NOW)
    assert headers[5:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert rows[0][5:] == ["web,side", "netk8s/echo,busybox:1.36", "app=web"]
    assert rows[1][5:] == ["", "", ""]


def test_replicasets() -> None:
    rs = workload("web-5d4f", {"replicas": 3, "selector": {
        "matchLabels": {"pod-template-hash": "5d4f", "app": "web"},
        "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]},
                             {"key": "canary", "operator": "DoesNotExist"}]}},
        {"replicas": 3, "readyReplicas": 1})
    headers, rows = table("ReplicaSet", [rs, {"metadata": meta("bare", 45)}], wide=True, now=NOW)
    assert headers == ["NAME", "DESIRED", "CURRENT", "READY", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert rows[0] == ["web-5d4f", "3", "3", "1", "45s", "web,side", "netk8s/echo,busybox:1.36",
                       "app=web,!canary,env in (dev,prod),pod-template-hash=5d4f"]
    assert rows[1] == ["bare", "1", "0", "0", "45s", "", "", "<none>"]


def test_label_selector_formatting() -> None:
    assert format_label_selector(None) == ""
    assert format_label_selector({}) == ""
    assert format_label_selector({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["y", "x"]},
                                                       {"key": "b", "operator": "Exists"}]}) == "a notin (x,y),b"
    assert format_label_selector({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}) == "<error>"


# --- EndpointSlice, Namespace, other -------------------------------------------------------

def test_endpointslices() -> None:
    many = {"metadata": meta("web-abc12"), "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "named"}, {}],
            "endpoints": [{"addresses": [f"10.244.1.{i}"]} for i in range(2, 7)]}
    few = {"metadata": meta("web-def34"), "addressType": "IPv4",
           "ports": [{"port": p} for p in (80, 81, 82, 83)],
           "endpoints": [{"addresses": ["10.244.2.2"]}]}
    empty = {"metadata": meta("empty"), "addressType": "IPv4"}
    headers, rows = table("EndpointSlice", [many, few, empty], now=NOW)
    assert headers == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert rows == [
        ["web-abc12", "IPv4", "8080,named,*", "10.244.1.2,10.244.1.3,10.244.1.4 + 2 more...", "5m"],
        ["web-def34", "IPv4", "80,81,82 + 1 more...", "10.244.2.2", "5m"],
        ["empty", "IPv4", "<unset>", "<unset>", "5m"],
    ]


def test_namespaces_and_other_kinds() -> None:
    ns = {"metadata": {"name": "kube-system", "creationTimestamp": ts(10)}, "status": {"phase": "Active"}}
    gone = {"metadata": {"name": "old", "creationTimestamp": ts(10)}, "status": {"phase": "Terminating"}}
    assert table("Namespace", [ns, gone], now=NOW) == (
        ["NAME", "STATUS", "AGE"], [["kube-system", "Active", "10s"], ["old", "Terminating", "10s"]])
    cm = {"metadata": meta("cfg", 9 * 86400)}
    assert table("CronTab", [cm], now=NOW) == (["NAME", "AGE"], [["cfg", "9d"]])  # a kind with no printer
    assert table("CronTab", [cm], wide=True, now=NOW) == (["NAME", "AGE"], [["cfg", "9d"]])


def test_all_namespaces_adds_leading_column() -> None:
    objs = [pod("a"), {"metadata": meta("b", namespace="kube-system")}]
    headers, rows = table("Pod", objs, wide=True, with_namespace=True, now=NOW)
    assert headers[:2] == ["NAMESPACE", "NAME"] and len(headers) == 10
    assert [r[:2] for r in rows] == [["default", "a"], ["kube-system", "b"]]
    assert all(len(r) == len(headers) for r in rows)
    headers, rows = table("CronTab", objs, with_namespace=True, now=NOW)
    assert headers == ["NAMESPACE", "NAME", "AGE"]


@pytest.mark.parametrize("kind", ["Pod", "Service", "Node", "Deployment", "ReplicaSet", "EndpointSlice",
                                  "Namespace", "Secret"])
def test_partial_objects_never_raise(kind: str) -> None:
    weird = [{}, {"metadata": None, "spec": None, "status": None},
             {"metadata": {"name": "x"}, "spec": {"ports": [None], "containers": None},
              "status": {"containerStatuses": [None, {"state": None}], "conditions": [None]}}]
    for wide in (False, True):
        headers, rows = table(kind, weird, wide=wide, with_namespace=True, now=NOW)
        assert len(rows) == 3 and all(len(r) == len(headers) for r in rows)
        assert all(isinstance(c, str) for r in rows for c in r)


# --- tabwriter -----------------------------------------------------------------------------

def test_format_table_matches_kubectl_layout() -> None:
    headers, rows = table("Pod", [pod("web-7d9f8c6b5-x2x9q"), pod("db-0", statuses=[running(False)])], now=NOW)
    assert format_table(headers, rows) == (
        "NAME                  READY   STATUS    RESTARTS   AGE\n"
        "web-7d9f8c6b5-x2x9q   1/1     Running   0          5m\n"
        "db-0                  0/1     Running   0          5m\n"
    )


def test_format_table_min_width_and_trailing_spaces() -> None:
    # Narrow columns are padded to kubectl's minimum width of 6; last cells are not padded.
    out = format_table(["A", "BB", "C"], [["x", "y", ""], ["xy", "", "long-last"]])
    assert out == ("A     BB    C\n"
                   "x     y\n"
                   "xy          long-last\n")
    assert all(line == line.rstrip() for line in out.splitlines())


def test_more_kinds_print_like_kubectl() -> None:
    fixed = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    created = "2026-01-01T11:58:00Z"
    md = {"name": "x", "namespace": "default", "creationTimestamp": created}
    cm = {"kind": "ConfigMap", "metadata": md, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}
    assert table("ConfigMap", [cm], now=fixed) == (["NAME", "DATA", "AGE"], [["x", "3", "2m"]])
    secret = {"kind": "Secret", "metadata": md, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}
    assert table("Secret", [secret], now=fixed)[1] == [["x", "kubernetes.io/tls", "2", "2m"]]
    eps = {"kind": "Endpoints", "metadata": md, "subsets": [
        {"addresses": [{"ip": f"10.0.0.{i}"} for i in range(1, 5)], "ports": [{"port": 80}]}]}
    assert table("Endpoints", [eps], now=fixed)[1] == [
        ["x", "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more...", "2m"]]
    assert table("Endpoints", [{"metadata": md}], now=fixed)[1] == [["x", "<none>", "2m"]]
    event = {"kind": "Event", "metadata": {**md, "name": "p.1"}, "type": "Normal", "reason": "Started",
             "message": "Started container c", "involvedObject": {"kind": "Pod", "name": "p"},
             "source": {"component": "kubelet", "host": "worker"}, "count": 2,
             "firstTimestamp": "2026-01-01T11:50:00Z", "lastTimestamp": "2026-01-01T11:59:30Z"}
    headers, rows = table("Event", [event], wide=True, now=fixed)
    assert headers == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE", "SUBOBJECT", "SOURCE", "FIRST SEEN",
                       "COUNT", "NAME"]
    assert rows == [["30s", "Normal", "Started", "pod/p", "Started container c", "", "kubelet, worker", "10m", "2",
                     "p.1"]]
    policy = {"kind": "NetworkPolicy", "metadata": md, "spec": {"podSelector": {"matchLabels": {"app": "db"}}}}
    assert table("NetworkPolicy", [policy], now=fixed)[1] == [["x", "app=db", "2m"]]
    lease = {"kind": "Lease", "metadata": md, "spec": {"holderIdentity": "worker"}}
    assert table("Lease", [lease], now=fixed)[1] == [["x", "worker", "2m"]]
    sa = {"kind": "ServiceAccount", "metadata": md}
    assert table("ServiceAccount", [sa], now=fixed)[1] == [["x", "0", "2m"]]
