"""The official `kubernetes` Python client against netk8s's API server and controllers
(no kernel needed): create, list with selectors, watch from a resourceVersion, stale
updates, patch, delete with propagation, scale."""

from __future__ import annotations

import ipaddress
from typing import Iterator

import pytest
import yaml

kubernetes = pytest.importorskip("kubernetes", reason="the official kubernetes client is a test dependency "
                                                      "(pip install -e '.[test]')")
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from kubernetes import watch as k8s_watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from netk8s.client.rest import ApiClient  # noqa: E402
from netk8s.cluster.state import StateDir, write_kubeconfig  # noqa: E402
from netk8s.controllers.manager import ControllerManager  # noqa: E402
from netk8s.testing.helpers import wait_for

MERGE = "application/merge-patch+json"


@pytest.fixture
def clients(api: ApiClient, tmp_path) -> Iterator[tuple[k8s.CoreV1Api, k8s.AppsV1Api]]:
    """Python clients configured from a netk8s kubeconfig, with the controllers running."""
    state = StateDir("pyclient", tmp_path)
    state.path.mkdir()
    write_kubeconfig(state, api.server)
    config = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(state.kubeconfig), client_configuration=config)
    assert yaml.safe_load(state.kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == api.server
    manager = ControllerManager(api, ipaddress.IPv4Network("10.244.0.0/16"))
    manager.start()
    with k8s.ApiClient(config) as raw:
        try:
            yield k8s.CoreV1Api(raw), k8s.AppsV1Api(raw)
        finally:
            manager.stop()


def pod(name: str, labels: dict) -> k8s.V1Pod:
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, labels=labels),
                     spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c", image="netk8s/echo")]))


def test_create_list_selectors_and_stale_update(clients) -> None:
    core, _ = clients
    created = core.create_namespaced_pod("default", pod("a", {"app": "web", "tier": "front"}))
    assert created.metadata.uid and created.status.phase == "Pending"
    core.create_namespaced_pod("default", pod("b", {"app": "db"}))
    names = [p.metadata.name for p in core.list_namespaced_pod("default", label_selector="app in (web),tier").items]
    assert names == ["a"]
    names = [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector="metadata.name=b").items]
    assert names == ["b"]
    fresh = core.read_namespaced_pod("a", "default")
    fresh.metadata.labels["x"] = "1"
    core.replace_namespaced_pod("a", "default", fresh)  # moves the resourceVersion on
    fresh.metadata.labels["x"] = "2"
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_pod("a", "default", fresh)
    assert exc.value.status == 409 and "the object has been modified" in exc.value.body


def test_watch_from_a_resource_version(clients) -> None:
    core, _ = clients
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("w1", {"app": "w"}))
    core.patch_namespaced_pod("w1", "default", {"metadata": {"labels": {"v": "2"}}}, _content_type=MERGE)
    core.delete_namespaced_pod("w1", "default")
    seen = []
    w = k8s_watch.Watch()
    for event in w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 3:
            w.stop()
    assert seen == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


def test_patch_types(clients) -> None:
    core, _ = clients
    core.create_namespaced_pod("default", pod("p", {"app": "x"}))
    merged = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": None, "n": "1"}}},
                                       _content_type=MERGE)
    assert merged.metadata.labels == {"n": "1"}
    patched = core.patch_namespaced_pod("p", "default", [{"op": "add", "path": "/metadata/labels/m", "value": "2"}])
    assert patched.metadata.labels == {"n": "1", "m": "2"}
    svc = core.create_namespaced_service("default", k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="s"),
        spec=k8s.V1ServiceSpec(selector={"app": "x"}, ports=[k8s.V1ServicePort(name="http", port=80)])))
    strategic = core.patch_namespaced_service(
        "s", "default", {"spec": {"ports": [{"name": "https", "port": 443}]}},
        _content_type="application/strategic-merge-patch+json")
    assert sorted(p.port for p in strategic.spec.ports) == [80, 443]  # merged by port, not replaced
    assert strategic.spec.cluster_ip == svc.spec.cluster_ip


def test_scale_and_delete_with_propagation(clients, api: ApiClient) -> None:
    core, apps = clients
    body = k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="web"),
        spec=k8s.V1DeploymentSpec(replicas=2, selector=k8s.V1LabelSelector(match_labels={"app": "web"}),
                                  template=k8s.V1PodTemplateSpec(
                                      metadata=k8s.V1ObjectMeta(labels={"app": "web"}),
                                      spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c", image="netk8s/echo")]))))
    apps.create_namespaced_deployment("default", body)
    wait_for(lambda: len(core.list_namespaced_pod("default", label_selector="app=web").items) == 2)
    scale = apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}}, _content_type=MERGE)
    assert scale.spec.replicas == 4 and scale.kind == "Scale"
    wait_for(lambda: len(core.list_namespaced_pod("default", label_selector="app=web").items) == 4)
    assert apps.read_namespaced_deployment_scale("web", "default").status.selector.startswith("app=web")
    # Orphan keeps the ReplicaSet (without its owner); Background then removes pods with it.
    apps.delete_namespaced_deployment("web", "default", body=k8s.V1DeleteOptions(propagation_policy="Orphan"))
    rs = wait_for(lambda: apps.list_namespaced_replica_set("default").items)
    assert not rs[0].metadata.owner_references
    apps.delete_namespaced_replica_set(rs[0].metadata.name, "default",
                                       body=k8s.V1DeleteOptions(propagation_policy="Background"))
    wait_for(lambda: not core.list_namespaced_pod("default", label_selector="app=web").items)


def test_errors_surface_as_api_exceptions(clients) -> None:
    core, _ = clients
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod("missing", "default")
    assert exc.value.status == 404 and '"reason":"NotFound"' in exc.value.body.replace(" ", "")
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", k8s.V1Service(
            metadata=k8s.V1ObjectMeta(name="bad"),
            spec=k8s.V1ServiceSpec(ports=[k8s.V1ServicePort(port=80, node_port=30001)])))
    assert exc.value.status == 422 and "spec.ports[0].nodePort" in exc.value.body
