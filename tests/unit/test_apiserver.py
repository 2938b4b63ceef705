"""The API server over HTTP: CRUD, selectors, concurrency, allocation, cascading deletes, watch."""

from __future__ import annotations

import threading
import time

import pytest

from netk8s.api.resources import DEPLOYMENTS, NODES, PODS, REPLICASETS, SERVICES
from netk8s.client.rest import ApiClient
from netk8s.errors import ApiError

SVCS = SERVICES
RS = REPLICASETS


def pod(name: str, labels: dict | None = None, **meta: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}, **meta},
            "spec": {"containers": [{"name": "c", "image": "netk8s/echo"}]}}


def svc(name: str, **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}], **spec}}


def test_create_defaults_and_metadata(api: ApiClient) -> None:
    created = api.create(PODS, pod("a"), "default")
    md = created["metadata"]
    assert md["uid"] and md["creationTimestamp"] and md["namespace"] == "default"
    assert created["spec"]["restartPolicy"] == "Always" and created["status"]["phase"] == "Pending"
    generated = api.create(PODS, {**pod(""), "metadata": {"generateName": "web-"}}, "default")
    assert generated["metadata"]["name"].startswith("web-") and len(generated["metadata"]["name"]) == 9


def test_probes_are_defaulted_in_pods_and_templates(api: ApiClient) -> None:
    probed = {"name": "c", "image": "netk8s/echo", "readinessProbe": {"httpGet": {"port": 8080}, "periodSeconds": 2},
              "livenessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 1}}
    created = api.create(PODS, {**pod("probed"), "spec": {"containers": [probed]}}, "default")
    container = created["spec"]["containers"][0]
    assert container["readinessProbe"] == {"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"},
                                           "periodSeconds": 2, "timeoutSeconds": 1, "successThreshold": 1,
                                           "failureThreshold": 3}
    assert container["livenessProbe"] == {"tcpSocket": {"port": 8080}, "failureThreshold": 1, "timeoutSeconds": 1,
                                          "periodSeconds": 10, "successThreshold": 1}
    deployment = api.create(DEPLOYMENTS, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [probed]}}}}, "default")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["timeoutSeconds"] == 1


def test_errors_are_kubernetes_status_objects(api: ApiClient) -> None:
    with pytest.raises(ApiError) as exc:
        api.get(PODS, "nope", "default")
    assert exc.value.code == 404 and str(exc.value) == 'pods "nope" not found'
    api.create(PODS, pod("a"), "default")
    with pytest.raises(ApiError) as exc:
        api.create(PODS, pod("a"), "default")
    assert exc.value.code == 409 and exc.value.reason == "AlreadyExists"
    with pytest.raises(ApiError) as exc:
        api.create(PODS, pod("a"), "missing-ns")
    assert exc.value.code == 404 and str(exc.value) == 'namespaces "missing-ns" not found'
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, {**svc("bad"), "spec": {"ports": [{"port": 70000}]}}, "default")
    assert exc.value.code == 422
    assert str(exc.value).startswith('Service "bad" is invalid: [spec.ports[0].port: Invalid value: 70000: must be '
                                     'between 1 and 65535, inclusive')
    assert exc.value.status["details"]["causes"][0]["field"] == "spec.ports[0].port"


def test_list_with_label_and_field_selectors(api: ApiClient) -> None:
    api.create(PODS, pod("a", {"app": "web"}), "default")
    api.create(PODS, pod("b", {"app": "db"}), "default")
    names = [p["metadata"]["name"] for p in api.list(PODS, "default", label_selector="app in (web)")["items"]]
    assert names == ["a"]
    names = [p["metadata"]["name"] for p in api.list(PODS, None, field_selector="metadata.name=b")["items"]]
    assert names == ["b"]
    with pytest.raises(ApiError) as exc:
        api.list(PODS, None, field_selector="spec.bogus=1")
    assert exc.value.code == 400 and "field label not supported: spec.bogus" in str(exc.value)


def test_limit_and_continue_page_through_a_list(api: ApiClient) -> None:
    for i in range(5):
        api.create(PODS, pod(f"p{i}"), "default")
    first = api.list(PODS, "default", limit=2)
    assert [p["metadata"]["name"] for p in first["items"]] == ["p0", "p1"]
    assert first["metadata"]["remainingItemCount"] == 3
    second = api.list(PODS, "default", limit=10, continue_token=first["metadata"]["continue"])
    assert [p["metadata"]["name"] for p in second["items"]] == ["p2", "p3", "p4"]


def test_stale_update_conflicts_and_status_is_separate(api: ApiClient) -> None:
    created = api.create(PODS, pod("a"), "default")
    fresh = api.update(PODS, {**created, "metadata": {**created["metadata"], "labels": {"x": "1"}}})
    with pytest.raises(ApiError) as exc:
        api.update(PODS, {**created, "metadata": {**created["metadata"], "labels": {"x": "2"}}})
    assert exc.value.code == 409
    assert "the object has been modified; please apply your changes to the latest version" in str(exc.value)
    # Main-resource updates ignore status; the status subresource changes only status.
    ignored = api.update(PODS, {**fresh, "status": {"phase": "Running"}})
    assert ignored["status"]["phase"] == "Pending"
    patched = api.patch(PODS, "a", {"status": {"phase": "Running"}, "metadata": {"labels": {"y": "1"}}},
                        "default", subresource="status")
    assert patched["status"]["phase"] == "Running" and "y" not in patched["metadata"]["labels"]


def test_service_ip_allocation_immutability_and_release(api: ApiClient) -> None:
    a = api.create(SVCS, svc("a"), "default")
    ip = a["spec"]["clusterIP"]
    assert ip.startswith("10.96.") and ip != "10.96.0.1" and a["spec"]["clusterIPs"] == [ip]
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("b", clusterIP=ip), "default")
    assert exc.value.code == 422 and "provided IP is already allocated" in str(exc.value)
    with pytest.raises(ApiError) as exc:
        api.patch(SVCS, "a", {"spec": {"clusterIP": "10.96.5.5"}}, "default")
    assert "spec.clusterIP: Invalid value: \"10.96.5.5\": field is immutable" in str(exc.value)
    node_port = api.create(SVCS, svc("np", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]), "default")
    assert node_port["spec"]["ports"][0]["nodePort"] == 30080
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("np2", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]), "default")
    assert "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated" in str(exc.value)
    api.delete(SVCS, "a", "default")
    assert api.create(SVCS, svc("b", clusterIP=ip), "default")["spec"]["clusterIP"] == ip


def test_dry_run_changes_nothing(api: ApiClient) -> None:
    api.create(SVCS, svc("a", clusterIP="10.96.0.50"), "default", dry_run=True)
    with pytest.raises(ApiError):
        api.get(SVCS, "a", "default")
    assert api.create(SVCS, svc("a", clusterIP="10.96.0.50"), "default")["spec"]["clusterIP"] == "10.96.0.50"


def test_delete_cascades_through_owner_references_unless_orphaned(api: ApiClient) -> None:
    rs = api.create(RS, {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
                         "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                                  "template": {"metadata": {"labels": {"app": "web"}},
                                               "spec": {"containers": [{"name": "c", "image": "i"}]}}}}, "default")
    ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": rs["metadata"]["uid"],
           "controller": True}
    api.create(PODS, pod("owned", ownerReferences=[ref]), "default")
    api.create(PODS, pod("free"), "default")
    api.delete(RS, "web", "default")
    assert [p["metadata"]["name"] for p in api.list(PODS, "default")["items"]] == ["free"]
    rs = api.create(RS, {**rs, "metadata": {"name": "web2"}}, "default")
    ref = dict(ref, name="web2", uid=rs["metadata"]["uid"])
    api.create(PODS, pod("kept", ownerReferences=[ref]), "default")
    api.delete(RS, "web2", "default", propagation="Orphan")
    kept = api.get(PODS, "kept", "default")
    assert kept["metadata"].get("ownerReferences") == []


def test_binding_sets_node_once(api: ApiClient) -> None:
    api.create(PODS, pod("a"), "default")
    api.bind("default", "a", "worker")
    bound = api.get(PODS, "a", "default")
    assert bound["spec"]["nodeName"] == "worker"
    with pytest.raises(ApiError) as exc:
        api.bind("default", "a", "other")
    assert exc.value.code == 409 and 'is already assigned to node "worker"' in str(exc.value)


def _collect(stream, events: list, stop_after: int) -> None:
    for event in stream:
        events.append(event)
        if len(events) >= stop_after:
            break


def test_watch_from_resource_version_and_selector_transitions(api: ApiClient) -> None:
    created = api.create(PODS, pod("a", {"app": "web"}), "default")
    rv = created["metadata"]["resourceVersion"]
    api.patch(PODS, "a", {"metadata": {"labels": {"app": "db"}}}, "default")  # leaves the selection
    stream = api.watch(PODS, "default", resource_version=rv, label_selector="app=web")
    events: list = []
    t = threading.Thread(target=_collect, args=(stream, events, 2))
    t.start()
    api.patch(PODS, "a", {"metadata": {"labels": {"app": "web"}}}, "default")  # back in
    t.join(timeout=5)
    stream.close()
    assert [(e[0], e[1]["metadata"]["labels"]["app"]) for e in events] == [("DELETED", "db"), ("ADDED", "web")]


def test_watch_without_version_starts_with_current_objects(api: ApiClient) -> None:
    api.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    stream = api.watch(NODES)
    events: list = []
    t = threading.Thread(target=_collect, args=(stream, events, 2))
    t.start()
    time.sleep(0.1)
    api.delete(NODES, "n1")
    t.join(timeout=5)
    stream.close()
    assert [e[0] for e in events] == ["ADDED", "DELETED"]


def test_watch_from_a_compacted_version_is_410_gone(api_factory) -> None:
    api = api_factory(history=3)
    first = api.create(PODS, pod("p0"), "default")["metadata"]["resourceVersion"]
    for i in range(1, 5):
        api.create(PODS, pod(f"p{i}"), "default")
    with pytest.raises(ApiError) as exc:
        api.watch(PODS, "default", resource_version=first)
    assert exc.value.code == 410 and "too old resource version" in str(exc.value)


def test_discovery(api: ApiClient) -> None:
    assert api.request("GET", "/version")["major"] == "1"
    core = api.request("GET", "/api/v1")
    assert {"pods", "services", "nodes", "namespaces", "pods/status", "pods/binding"} <= {
        r["name"] for r in core["resources"]}
    groups = {g["name"] for g in api.request("GET", "/apis")["groups"]}
    assert {"apps", "discovery.k8s.io"} <= groups


def test_out_of_range_addresses_and_ports_and_health_check_port(api: ApiClient) -> None:
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("far", clusterIP="10.200.0.1"), "default")
    assert "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/16" in str(exc.value)
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("low", type="NodePort", ports=[{"port": 80, "nodePort": 8080}]), "default")
    assert ("spec.ports[0].nodePort: Invalid value: 8080: provided port is not in the valid range. The range of "
            "valid ports is 30000-32767") in str(exc.value)
    lb = api.create(SVCS, svc("lb", type="LoadBalancer", externalTrafficPolicy="Local"), "default")
    health = lb["spec"]["healthCheckNodePort"]
    assert 30000 <= health <= 32767 and health != lb["spec"]["ports"][0]["nodePort"]
    # Switching the policy to Cluster releases the health check port; a new service can take it.
    api.patch(SVCS, "lb", {"spec": {"externalTrafficPolicy": "Cluster", "healthCheckNodePort": None}}, "default")
    assert "healthCheckNodePort" not in api.get(SVCS, "lb", "default")["spec"]
    other = api.create(SVCS, svc("np", type="NodePort", ports=[{"port": 80, "nodePort": health}]), "default")
    assert other["spec"]["ports"][0]["nodePort"] == health
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("bad", type="NodePort", healthCheckNodePort=31000), "default")
    assert "spec.healthCheckNodePort" in str(exc.value)


def test_type_change_releases_node_ports(api: ApiClient) -> None:
    created = api.create(SVCS, svc("np", type="NodePort", ports=[{"port": 80, "nodePort": 30100}]), "default")
    assert created["spec"]["ports"][0]["nodePort"] == 30100
    api.patch(SVCS, "np", {"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}, "default")
    assert "nodePort" not in api.get(SVCS, "np", "default")["spec"]["ports"][0]
    assert api.create(SVCS, svc("np2", type="NodePort", ports=[{"port": 80, "nodePort": 30100}]),
                      "default")["spec"]["ports"][0]["nodePort"] == 30100


def test_service_traffic_fields_are_validated_and_defaulted(api: ApiClient) -> None:
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("x", externalIPs=["127.0.0.1"]), "default")
    assert 'spec.externalIPs[0]: Invalid value: "127.0.0.1"' in str(exc.value)
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("x", loadBalancerSourceRanges=["10.0.0.0/8"]), "default")
    assert "spec.loadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'" in str(exc.value)
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("x", type="NodePort", externalTrafficPolicy="Nearby"), "default")
    assert 'spec.externalTrafficPolicy: Unsupported value: "Nearby"' in str(exc.value)
    sticky = api.create(SVCS, svc("sticky", sessionAffinity="ClientIP"), "default")
    assert sticky["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    with pytest.raises(ApiError) as exc:
        api.create(SVCS, svc("y", sessionAffinity="ClientIP",
                             sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}), "default")
    assert "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0" in str(exc.value)
    ext = api.create(SVCS, svc("ext", externalIPs=["203.0.113.7"]), "default")
    assert ext["spec"]["externalTrafficPolicy"] == "Cluster"
