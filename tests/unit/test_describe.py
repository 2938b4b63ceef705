"""``describe`` output checked against kubectl's own for the same objects.

The fixtures in ``data/describe`` were recorded from a running netk8s cluster:
each holds an object, the related objects ``netk8s describe`` fetched for it,
the time, and what ``kubectl describe`` (v1.32) printed for it at that time.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import pytest

from netk8s.api.describe import Related, describe, describe_probe, qos_class, tabwrite

FIXTURES = sorted((Path(__file__).parent / "data" / "describe").glob("*.json"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_describe_prints_what_kubectl_prints(path: Path) -> None:
    fixture = json.loads(path.read_text())
    now = _dt.datetime.fromisoformat(fixture["now"]).replace(microsecond=0)
    assert describe(fixture["object"], Related(**fixture["related"]), now) == fixture["kubectl"]


def test_every_described_kind_has_a_fixture() -> None:
    kinds = {json.loads(p.read_text())["object"]["kind"] for p in FIXTURES}
    assert kinds == {"Pod", "Service", "Deployment", "ReplicaSet", "Node", "Namespace", "ConfigMap", "Secret",
                     "Endpoints", "EndpointSlice", "ServiceAccount"}


def test_tabwrite_aligns_columns_per_block_like_go() -> None:
    text = "a:\tx\nlonger:\ty\nheader\nb:\tz\n  c\t1\t2\n  dd\t3\t4"
    assert tabwrite(text).split("\n") == ["a:       x", "longer:  y", "header", "b:    z", "  c   1  2", "  dd  3  4"]
    # an empty cell still takes the column (kubectl's "Name\t\tCPU Requests")
    assert tabwrite("n\t\tx\nname\t\ty") == "n       x\nname    y"


def test_generic_kinds_show_identity_and_events() -> None:
    now = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
    event = {"type": "Normal", "reason": "Made", "message": "made it ", "source": {"component": "me"},
             "firstTimestamp": "2025-12-31T23:59:00Z", "lastTimestamp": "2025-12-31T23:59:50Z", "count": 3}
    text = describe({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "deny", "namespace": "default", "labels": {"a": "b"}}},
                    Related(events=[event]), now)
    assert text.splitlines() == [
        "Name:         deny", "Namespace:    default", "Labels:       a=b", "Annotations:  <none>",
        "API Version:  networking.k8s.io/v1", "Kind:         NetworkPolicy", "Events:",
        "  Type    Reason  Age                From  Message", "  ----    ------  ----               ----  -------",
        "  Normal  Made    10s (x3 over 60s)  me    made it"]


@pytest.mark.parametrize("probe,text", [
    ({"httpGet": {"port": 8080, "path": "/healthz", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10,
      "successThreshold": 1, "failureThreshold": 3},
     "http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3"),
    ({"httpGet": {"host": "fe80::1", "port": "http", "path": "/"}}, "http-get //[fe80::1]:http/ delay=0s timeout=0s "
                                                                    "period=0s #success=0 #failure=0"),
    ({"tcpSocket": {"port": 53}, "initialDelaySeconds": 5}, "tcp-socket :53 delay=5s timeout=0s period=0s #success=0 "
                                                            "#failure=0"),
    ({"exec": {"command": ["cat", "/tmp/ok"]}}, "exec [cat /tmp/ok] delay=0s timeout=0s period=0s #success=0 "
                                                "#failure=0"),
])
def test_probe_lines(probe: dict, text: str) -> None:
    assert describe_probe(probe) == text


@pytest.mark.parametrize("resources,qos", [
    ([{}], "BestEffort"),
    ([{"requests": {"cpu": "100m"}}], "Burstable"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}], "Guaranteed"),  # requests default to limits
    ([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}], "Burstable"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}, {}], "Burstable"),
])
def test_qos_class(resources: list[dict], qos: str) -> None:
    pod = {"spec": {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(resources)]}}
    assert qos_class(pod) == qos
