"""Container environment: $(VAR) expansion, service links, downward API, ConfigMaps and Secrets."""

from __future__ import annotations

import base64

import pytest

from netk8s.errors import ValidationError
from netk8s.kubelet.envvars import (
    ContainerConfigError,
    PodRuntimeInfo,
    RefKind,
    container_env,
    expand,
    expand_command,
    service_env,
    services_for_pod,
)

INFO = PodRuntimeInfo("worker", ("10.244.1.7",), ("172.18.0.3",), {"cpu": "4", "memory": "8Gi"})


def svc(name: str, namespace: str, ip: str, ports: list[dict]) -> dict:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"clusterIP": ip, "ports": ports}}


def pod(namespace: str = "team", **spec: object) -> dict:
    return {"metadata": {"name": "p", "namespace": namespace, "uid": "u-1", "labels": {"app": "web"},
                         "annotations": {"note": "x"}},
            "spec": {"serviceAccountName": "robot", **spec}}


OBJECTS = {
    (RefKind.CONFIGMAP, "team", "cfg"): {"data": {"MODE": "fast", "bad=key": "x", "LEVEL": "3"}},
    (RefKind.SECRET, "team", "creds"): {"data": {"PASSWORD": base64.b64encode(b"s3cret").decode()}},
}


def lookup(kind: RefKind, namespace: str, name: str) -> dict | None:
    return OBJECTS.get((kind, namespace, name))


@pytest.mark.parametrize("text,expected", [
    ("$(A)-$(B)", "1-2"), ("$$(A)", "$(A)"), ("$(MISSING)", "$(MISSING)"), ("$(A", "$(A"),
    ("a$b", "a$b"), ("$", "$"), ("$(A)$(A)", "11"), ("x$$y", "x$y"),
])
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1"}, {"B": "2"}) == expected


def test_service_links_for_one_service() -> None:
    env = service_env([svc("back-end", "team", "10.96.0.20", [
        {"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns-udp", "port": 53, "protocol": "UDP"}])])
    assert env == {
        "BACK_END_SERVICE_HOST": "10.96.0.20", "BACK_END_SERVICE_PORT": "80",
        "BACK_END_SERVICE_PORT_HTTP": "80", "BACK_END_SERVICE_PORT_DNS_UDP": "53",
        "BACK_END_PORT": "tcp://10.96.0.20:80",
        "BACK_END_PORT_80_TCP": "tcp://10.96.0.20:80", "BACK_END_PORT_80_TCP_PROTO": "tcp",
        "BACK_END_PORT_80_TCP_PORT": "80", "BACK_END_PORT_80_TCP_ADDR": "10.96.0.20",
        "BACK_END_PORT_53_UDP": "udp://10.96.0.20:53", "BACK_END_PORT_53_UDP_PROTO": "udp",
        "BACK_END_PORT_53_UDP_PORT": "53", "BACK_END_PORT_53_UDP_ADDR": "10.96.0.20",
    }


def test_which_services_a_pod_sees() -> None:
    services = [svc("kubernetes", "default", "10.96.0.1", [{"name": "https", "port": 443}]),
                svc("web", "team", "10.96.0.5", [{"port": 80}]),
                svc("web", "other", "10.96.0.6", [{"port": 80}]),
                svc("headless", "team", "None", [{"port": 80}]),
                svc("external", "team", "", [{"port": 80}])]
    names = [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services_for_pod(services, "team", True)]
    assert names == [("default", "kubernetes"), ("team", "web")]
    # enableServiceLinks: false still gets the master service.
    assert [s["metadata"]["name"] for s in services_for_pod(services, "team", False)] == ["kubernetes"]
    assert services_for_pod(services[1:], "team", False) == []


def test_container_env_precedence_and_sources() -> None:
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "creds"}, "prefix": "S_"}],
        "env": [
            {"name": "MODE", "value": "slow"},  # env overrides envFrom
            {"name": "URL", "value": "http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)/$(MODE)"},
            {"name": "WEB_SERVICE_PORT", "value": "9999"},  # explicit env wins over the service link
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "EMPTY"},
        ],
    }
    result = container_env(pod(), container, INFO, lookup,
                           [svc("web", "team", "10.96.0.5", [{"port": 80}])], base={"HOSTNAME": "p"})
    env = result.env
    assert env["MODE"] == "slow" and env["LEVEL"] == "3" and env["S_PASSWORD"] == "s3cret"
    # Expanded in order: MODE already overridden, WEB_SERVICE_PORT not yet (the service link's value).
    assert env["URL"] == "http://10.96.0.5:80/slow"
    assert env["WEB_SERVICE_PORT"] == "9999" and env["WEB_SERVICE_HOST"] == "10.96.0.5"
    assert (env["POD"], env["APP"], env["IPS"], env["SA"], env["LVL"]) == ("p", "web", "10.244.1.7", "robot", "3")
    assert "OPT" not in env and env["EMPTY"] == "" and env["HOSTNAME"] == "p"
    assert result.invalid_keys == [(RefKind.CONFIGMAP, "team/cfg", ["bad=key"])]


def test_missing_references_are_container_config_errors() -> None:
    with pytest.raises(ContainerConfigError, match='configmap "absent" not found'):
        container_env(pod(), {"envFrom": [{"configMapRef": {"name": "absent"}}]}, INFO, lookup, [])
    with pytest.raises(ContainerConfigError, match="couldn't find key NOPE in Secret team/creds"):
        container_env(pod(), {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "NOPE"}}}]},
                      INFO, lookup, [])
    with pytest.raises(ValidationError, match=r"env\[0\]"):
        container_env(pod(), {"name": "c", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.x"}}}]},
                      INFO, lookup, [])


def test_resource_field_ref_rounds_up_and_falls_back_to_allocatable() -> None:
    container = {"name": "c", "resources": {"limits": {"cpu": "250m", "memory": "100Mi"}},
                 "env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                         {"name": "MCPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu",
                                                                             "divisor": "1m"}}},
                         {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                            "divisor": "1Mi"}}}]}
    env = container_env(pod(), container, INFO, lookup, []).env
    assert (env["CPU"], env["MCPU"], env["MEM"]) == ("1", "250", "100")
    unlimited = {"name": "c", "env": [{"name": "MEM", "valueFrom": {"resourceFieldRef": {
        "resource": "limits.memory", "divisor": "1Gi"}}}]}
    assert container_env(pod(), unlimited, INFO, lookup, []).env["MEM"] == "8"


def test_command_and_args_are_expanded() -> None:
    spec = {"command": ["echo", "$(A)"], "args": ["$$(A)", "$(B)"], "image": "x"}
    assert expand_command(spec, {"A": "1"}) == {"command": ["echo", "1"], "args": ["$(A)", "$(B)"], "image": "x"}
    assert spec["command"] == ["echo", "$(A)"]  # the spec itself is untouched
