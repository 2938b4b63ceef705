"""Deletion semantics, subresources and server-side apply of the API server."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from netk8s.api.resources import DEPLOYMENTS, EVENTS, NAMESPACES, PODS, REPLICASETS
from netk8s.apiserver.registry import Registry
from netk8s.apiserver.server import ApiServer, listen
from netk8s.client.rest import ApiClient
from netk8s.cluster.naming import container_log_path
from netk8s.errors import ApiError
from netk8s.store.sqlite import SQLiteStore


def pod(name: str, node: str = "", **extra: object) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "netk8s/echo"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **extra}, "spec": spec}


def deployment(name: str, replicas: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "netk8s/echo"}]}}}}


def test_bound_pod_deletion_is_graceful_until_grace_zero(api: ApiClient) -> None:
    api.create(PODS, pod("p", node="worker"), "default")
    marked = api.delete(PODS, "p", "default")
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["deletionGracePeriodSeconds"] == 30
    # Status updates during termination keep it; the kubelet's grace-0 delete removes it.
    api.patch(PODS, "p", {"status": {"phase": "Running"}}, "default", subresource="status")
    with pytest.raises(ApiError) as exc:
        api.delete(PODS, "p", "default", grace_period=0, preconditions={"uid": "not-the-uid"})
    assert exc.value.code == 409 and "Precondition failed: UID in precondition" in str(exc.value)
    api.delete(PODS, "p", "default", grace_period=0)
    with pytest.raises(ApiError):
        api.get(PODS, "p", "default")
    # Unscheduled pods have nobody to finish a graceful deletion: they go at once.
    api.create(PODS, pod("q"), "default")
    api.delete(PODS, "q", "default")
    with pytest.raises(ApiError):
        api.get(PODS, "q", "default")


def test_finalizers_hold_an_object_until_removed(api: ApiClient) -> None:
    api.create(PODS, pod("f", finalizers=["example.com/hold"]), "default")
    held = api.delete(PODS, "f", "default")
    assert held["metadata"]["deletionTimestamp"]
    assert api.get(PODS, "f", "default")["metadata"]["finalizers"] == ["example.com/hold"]
    api.patch(PODS, "f", {"metadata": {"finalizers": None}}, "default")
    with pytest.raises(ApiError) as exc:
        api.get(PODS, "f", "default")
    assert exc.value.code == 404


def test_foreground_deletion_waits_for_dependents(api: ApiClient) -> None:
    rs = api.create(REPLICASETS, {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
                                  "spec": {"replicas": 0, "selector": {"matchLabels": {"a": "b"}},
                                           "template": {"metadata": {"labels": {"a": "b"}},
                                                        "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
                    "default")
    ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": rs["metadata"]["uid"],
           "controller": True}
    api.create(PODS, pod("dep", node="worker", ownerReferences=[ref]), "default")
    api.delete(REPLICASETS, "rs", "default", propagation="Foreground")
    owner = api.get(REPLICASETS, "rs", "default")
    assert "foregroundDeletion" in owner["metadata"]["finalizers"]
    assert api.get(PODS, "dep", "default")["metadata"]["deletionTimestamp"]  # dependent terminating
    api.delete(PODS, "dep", "default", grace_period=0)  # its kubelet finishes
    with pytest.raises(ApiError):
        api.get(REPLICASETS, "rs", "default")


def test_namespace_deletion_terminates_then_finalize_removes_it(api: ApiClient) -> None:
    api.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    terminating = api.delete(NAMESPACES, "team")
    assert terminating["status"]["phase"] == "Terminating"
    with pytest.raises(ApiError) as exc:
        api.create(PODS, pod("late"), "team")
    assert exc.value.code == 403 and "because it is being terminated" in str(exc.value)
    ns = api.get(NAMESPACES, "team")
    ns["spec"]["finalizers"] = []
    api.request("PUT", "/api/v1/namespaces/team/finalize", ns)
    with pytest.raises(ApiError):
        api.get(NAMESPACES, "team")
    with pytest.raises(ApiError) as exc:
        api.delete(NAMESPACES, "kube-system")
    assert exc.value.code == 403


def test_scale_subresource(api: ApiClient) -> None:
    api.create(DEPLOYMENTS, deployment("web"), "default")
    scale = api.get(DEPLOYMENTS, "web", "default", subresource="scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2 and scale["status"]["selector"] == "app=web"
    api.patch(DEPLOYMENTS, "web", {"spec": {"replicas": 5}}, "default", subresource="scale")
    assert api.get(DEPLOYMENTS, "web", "default")["spec"]["replicas"] == 5
    scale = api.get(DEPLOYMENTS, "web", "default", subresource="scale")
    scale["spec"]["replicas"] = 1
    api.request("PUT", "/apis/apps/v1/namespaces/default/deployments/web/scale", scale)
    assert api.get(DEPLOYMENTS, "web", "default")["spec"]["replicas"] == 1
    with pytest.raises(ApiError) as exc:
        api.request("PUT", "/apis/apps/v1/namespaces/default/deployments/web/scale", scale)  # stale version
    assert exc.value.code == 409


def test_default_tolerations_are_added(api: ApiClient) -> None:
    created = api.create(PODS, pod("t"), "default")
    keys = {(t["key"], t["effect"], t["tolerationSeconds"]) for t in created["spec"]["tolerations"]}
    assert keys == {("node.kubernetes.io/not-ready", "NoExecute", 300),
                    ("node.kubernetes.io/unreachable", "NoExecute", 300)}


def test_events_field_selectors(api: ApiClient) -> None:
    target = api.create(PODS, pod("x"), "default")
    for reason in ("Scheduled", "Started"):
        api.create(EVENTS, {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"x.{reason.lower()}"},
                            "involvedObject": {"kind": "Pod", "name": "x", "namespace": "default",
                                               "uid": target["metadata"]["uid"]},
                            "reason": reason, "source": {"component": "kubelet"}, "type": "Normal"}, "default")
    found = api.list(EVENTS, "default", field_selector=f"involvedObject.name=x,involvedObject.uid="
                                                       f"{target['metadata']['uid']},reason=Started,source=kubelet")
    assert [e["reason"] for e in found["items"]] == ["Started"]


def test_server_side_apply_owns_removes_and_conflicts(api: ApiClient) -> None:
    path = "/apis/apps/v1/namespaces/default/deployments/ssa"
    ct = "application/apply-patch+yaml"
    config = deployment("ssa", 3)
    config["metadata"]["labels"] = {"team": "a", "tier": "web"}
    created = api.request("PATCH", path, config, {"fieldManager": "alice"}, content_type=ct)
    assert created["spec"]["replicas"] == 3 and created["metadata"]["managedFields"][0]["manager"] == "alice"
    # Re-applying without a label removes it (alice owned it); untouched fields stay.
    del config["metadata"]["labels"]["tier"]
    again = api.request("PATCH", path, config, {"fieldManager": "alice"}, content_type=ct)
    assert again["metadata"]["labels"] == {"team": "a"} and again["spec"]["replicas"] == 3
    # Another manager setting alice's field to another value conflicts, unless forced.
    bob = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ssa"}, "spec": {"replicas": 5}}
    with pytest.raises(ApiError) as exc:
        api.request("PATCH", path, bob, {"fieldManager": "bob"}, content_type=ct)
    assert exc.value.code == 409 and 'conflict with "alice": .spec.replicas' in str(exc.value)
    forced = api.request("PATCH", path, bob, {"fieldManager": "bob", "force": "true"}, content_type=ct)
    assert forced["spec"]["replicas"] == 5
    with pytest.raises(ApiError) as exc:
        api.request("PATCH", path, bob, content_type=ct)
    assert exc.value.code == 400 and "fieldManager" in str(exc.value)


def next_within(stream: Iterator[bytes], timeout: float = 10) -> bytes | None:
    """The stream's next chunk (None at its end), failing after ``timeout`` instead of hanging."""
    result: list[bytes | None] = []
    reader = threading.Thread(target=lambda: result.append(next(stream, None)), daemon=True)
    reader.start()
    reader.join(timeout)
    assert result, f"no chunk within {timeout:g}s"
    return result[0]


def test_log_subresource(tmp_path: Path) -> None:
    store = SQLiteStore()
    server = ApiServer(Registry(store), logs_dir=tmp_path)
    sock = listen()
    server.start_in_thread(sock)
    api = ApiClient(f"http://127.0.0.1:{sock.getsockname()[1]}")
    try:
        created = api.create(PODS, pod("logger"), "default")
        path = PODS.object_path("logger", "default") + "/log"
        with pytest.raises(ApiError) as exc:
            api.get_text(path)
        assert 'container "c" in pod "logger" is waiting to start: ContainerCreating' in str(exc.value)
        log_file = container_log_path(tmp_path, created, "c", 0)
        log_file.parent.mkdir(parents=True)
        log_file.write_text("one\ntwo\nthree\n")
        assert api.get_text(path) == "one\ntwo\nthree\n"
        assert api.get_text(path, {"tailLines": 2}) == "two\nthree\n"
        with pytest.raises(ApiError) as exc:
            api.get_text(path, {"previous": "true"})
        assert 'previous terminated container "c" in pod "logger" not found' in str(exc.value)
        with pytest.raises(ApiError) as exc:
            api.get_text(path, {"container": "nope"})
        assert "container nope is not valid for pod logger" in str(exc.value)

        # follow=true: what is there, then what the container writes, until the pod goes.
        stream = api.stream_text(path, {"follow": "true", "tailLines": 1})
        assert next_within(stream) == b"three\n"
        with open(log_file, "a") as log:
            log.write("four\n")
        assert next_within(stream) == b"four\n"
        api.delete(PODS, "logger", "default", grace_period=0)
        assert next_within(stream) is None  # the stream ends with the pod
        with pytest.raises(ApiError) as exc:
            next(api.stream_text(PODS.object_path("nope", "default") + "/log", {"follow": "true"}))
        assert exc.value.code == 404
    finally:
        api.close()
        server.stop()
        store.close()


def test_watch_bookmarks() -> None:
    store = SQLiteStore()
    server = ApiServer(Registry(store), bookmark_interval=0.2)
    sock = listen()
    server.start_in_thread(sock)
    api = ApiClient(f"http://127.0.0.1:{sock.getsockname()[1]}")
    try:
        stream = api.watch(PODS, "default", resource_version=store.revision)
        events: list = []

        def collect() -> None:
            for event in stream:
                events.append(event)
                if len(events) >= 1:
                    break
        t = threading.Thread(target=collect)
        t.start()
        t.join(timeout=5)
        stream.close()
        assert events and events[0][0] == "BOOKMARK"
        assert int(events[0][1]["metadata"]["resourceVersion"]) == store.revision
    finally:
        server.stop()
        store.close()


def test_deployment_rolling_update_parameters_are_validated(api: ApiClient) -> None:
    bad = deployment("web")
    bad["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}
    with pytest.raises(ApiError) as exc:
        api.create(DEPLOYMENTS, bad, "default")
    assert "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"0%\": may not be 0 when `maxSurge` is 0" \
        in str(exc.value)
    bad["spec"]["strategy"] = {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}
    with pytest.raises(ApiError) as exc:
        api.create(DEPLOYMENTS, bad, "default")
    assert "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'" \
        in str(exc.value)
    bad["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "lots"}}
    with pytest.raises(ApiError) as exc:
        api.create(DEPLOYMENTS, bad, "default")
    assert "spec.strategy.rollingUpdate.maxSurge: Invalid value: \"lots\"" in str(exc.value)
