"""The namespace controller: deletion order, conditions and finalization as pure
functions, then emptying and finalizing Terminating namespaces on an in-process API server.

The in-process tests rely on the API server's namespace lifecycle (DELETE ->
Terminating while spec.finalizers holds "kubernetes", the ``finalize``
subresource) and on metadata.finalizers holding objects back.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from netk8s.api import meta
from netk8s.api.resources import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    NAMESPACES,
    PODS,
    RESOURCES,
    SERVICES,
)
from netk8s.client.rest import ApiClient
from netk8s.controllers.namespace import (
    ContentReport,
    NamespaceController,
    deletion_conditions,
    deletion_order,
    finalized,
    needs_finalizing,
    with_conditions,
)
from netk8s.errors import ApiError
from netk8s.testing.helpers import wait_for


def condition(obj: dict, cond_type: str) -> dict:
    cond = meta.get_condition(obj, cond_type)
    assert cond is not None, f"no {cond_type} condition"
    return cond


def terminating(finalizers: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team", "deletionTimestamp": "2024-05-01T12:00:00Z", "resourceVersion": "9"},
            "spec": {"finalizers": finalizers}, "status": {"phase": "Terminating"}}


# -- pure ---------------------------------------------------------------------------------------


def test_deletion_order_covers_namespaced_resources_with_events_last() -> None:
    order = deletion_order()
    assert order[-1] is EVENTS
    assert set(order) == {r for r in RESOURCES if r.namespaced}
    assert PODS in order and NAMESPACES not in order


def test_finalize_drops_only_the_kubernetes_finalizer() -> None:
    ns = terminating(["example.com/keep", "kubernetes"])
    assert needs_finalizing(ns)
    out = finalized(ns)
    assert out["spec"]["finalizers"] == ["example.com/keep"]
    assert out["metadata"]["resourceVersion"] == "9"
    assert ns["spec"]["finalizers"] == ["example.com/keep", "kubernetes"]  # input untouched
    assert not needs_finalizing(out)
    active = dict(terminating(["kubernetes"]), metadata={"name": "team"})
    assert not needs_finalizing(active)


def test_conditions_report_remaining_content_and_finalizers() -> None:
    report = ContentReport()
    report.count(PODS, [{"metadata": {"name": "a"}},
                        {"metadata": {"name": "b", "finalizers": ["example.com/hold"]}}])
    report.count(SERVICES, [])
    assert not report.empty and report.remaining == {"pods.": 2}
    by_type = {t.value: (status, reason, message) for t, status, reason, message in deletion_conditions(report)}
    assert by_type["NamespaceContentRemaining"] == (
        "True", "SomeResourcesRemain", "Some resources are remaining: pods. has 2 resource instances")
    assert by_type["NamespaceFinalizersRemaining"] == (
        "True", "SomeFinalizersRemain",
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
    assert by_type["NamespaceDeletionContentFailure"][0] == "False"
    done = {t.value: status for t, status, _, _ in deletion_conditions(ContentReport())}
    assert set(done.values()) == {"False"} and len(done) == 5


def test_with_conditions_writes_only_on_change() -> None:
    report = ContentReport(remaining={"pods.": 1})
    ns = with_conditions(terminating(["kubernetes"]), report)
    assert ns is not None
    assert condition(ns, "NamespaceContentRemaining")["status"] == "True"
    assert with_conditions(ns, ContentReport(remaining={"pods.": 1})) is None
    later = with_conditions(ns, ContentReport())
    assert later is not None and condition(later, "NamespaceContentRemaining")["status"] == "False"


def test_polling_slows_down_while_nothing_changes() -> None:
    ctl = NamespaceController(ApiClient("http://127.0.0.1:9"), poll_interval=0.5, max_poll_interval=3.0)
    stuck = ContentReport(remaining={"pods.": 2})
    assert [ctl._next_delay("team", stuck) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert ctl._next_delay("team", ContentReport(remaining={"pods.": 1})) == 0.5  # progress: poll fast again
    assert ctl._next_delay("other", stuck) == 0.5  # per namespace


# -- against an API server ---------------------------------------------------------------------


@pytest.fixture
def controller(api: ApiClient) -> Iterator[NamespaceController]:
    ctl = NamespaceController(api, poll_interval=0.05)
    ctl.start()
    try:
        assert ctl.wait_synced(5)
        yield ctl
    finally:
        ctl.stop()
        ctl.join()


def namespace_gone(api: ApiClient, name: str) -> bool:
    try:
        api.get(NAMESPACES, name)
    except ApiError as exc:
        return exc.code == 404
    return False


def fill(api: ApiClient, ns: str) -> None:
    api.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                            "data": {"k": "v"}}, ns)
    api.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                          "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}, ns)
    api.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo"},
                      "spec": {"containers": [{"name": "c", "image": "netk8s/echo"}]}}, ns)
    api.create(DEPLOYMENTS, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                                      "template": {"metadata": {"labels": {"app": "web"}},
                                                   "spec": {"containers": [{"name": "c", "image": "i"}]}}}}, ns)


def test_deleted_namespace_is_emptied_and_disappears(api: ApiClient, controller: NamespaceController) -> None:
    fill(api, "team")
    fill(api, "other")
    api.delete(NAMESPACES, "team")
    wait_for(lambda: namespace_gone(api, "team"))
    for resource in RESOURCES:
        if resource.namespaced:
            assert api.list(resource, "team")["items"] == [], resource.plural
    # Neighbours are untouched.
    assert api.get(NAMESPACES, "other")["status"]["phase"] == "Active"
    assert [meta.name_of(p) for p in api.list(PODS, "other")["items"]] == ["solo"]
    assert len(api.list(CONFIGMAPS, "other")["items"]) == 1


def test_namespace_waits_for_finalizers_and_graceful_pods(api: ApiClient, controller: NamespaceController) -> None:
    api.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    api.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "held", "finalizers": ["example.com/hold"]}}, "team")
    api.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "free"}}, "team")
    api.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "running"},
                      "spec": {"containers": [{"name": "c", "image": "netk8s/echo"}]}}, "team")
    api.bind("team", "running", "worker")
    api.patch(PODS, "running", {"status": {"phase": "Running"}}, "team", subresource="status")
    api.delete(NAMESPACES, "team")

    def finalizers_reported() -> bool:
        cond = meta.get_condition(api.get(NAMESPACES, "team"), "NamespaceFinalizersRemaining")
        return cond is not None and cond["status"] == "True"
    wait_for(finalizers_reported)
    ns = api.get(NAMESPACES, "team")
    assert ns["status"]["phase"] == "Terminating" and "kubernetes" in ns["spec"]["finalizers"]
    assert "example.com/hold in 1 resource instances" in condition(ns, "NamespaceFinalizersRemaining")["message"]
    assert condition(ns, "NamespaceContentRemaining")["message"] == (
        "Some resources are remaining: configmaps. has 1 resource instances, pods. has 1 resource instances")
    assert [meta.name_of(c) for c in api.list(CONFIGMAPS, "team")["items"]] == ["held"]
    assert api.get(PODS, "running", "team")["metadata"]["deletionTimestamp"]  # graceful: the kubelet finishes it
    api.patch(CONFIGMAPS, "held", {"metadata": {"finalizers": None}}, "team")

    def only_the_pod_left() -> bool:
        cond = meta.get_condition(api.get(NAMESPACES, "team"), "NamespaceContentRemaining")
        return cond is not None and cond["message"] == "Some resources are remaining: pods. has 1 resource instances"
    wait_for(only_the_pod_left)
    time.sleep(0.2)
    assert not namespace_gone(api, "team")  # still waiting for the pod's graceful deletion
    api.delete(PODS, "running", "team", grace_period=0)  # what the kubelet does once the containers stopped
    wait_for(lambda: namespace_gone(api, "team"))
