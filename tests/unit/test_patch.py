"""Merge patch, JSON patch, strategic merge patch, and apply's three-way patch."""

from __future__ import annotations

import pytest

from netk8s.apiserver.patch import (
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from netk8s.client.apply import three_way_patch


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"a": None, "b": {"c": 5}, "e": [1]}) == \
        {"b": {"c": 5, "d": 3}, "e": [1]}


def test_json_patch_operations_and_failed_test() -> None:
    doc = {"spec": {"replicas": 1, "ports": [{"port": 80}]}}
    out = json_patch(doc, [{"op": "replace", "path": "/spec/replicas", "value": 3},
                           {"op": "add", "path": "/spec/ports/-", "value": {"port": 443}},
                           {"op": "remove", "path": "/spec/ports/0"}])
    assert out == {"spec": {"replicas": 3, "ports": [{"port": 443}]}}
    assert doc["spec"]["replicas"] == 1  # input untouched
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "test", "path": "/spec/replicas", "value": 2}])


def test_strategic_merge_merges_containers_by_name_and_ports_by_port() -> None:
    live = {"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y"}],
                     "ports": [{"port": 80, "name": "http"}]}}
    patch = {"spec": {"containers": [{"name": "a", "image": "x:2"}, {"name": "b", "$patch": "delete"}],
                      "ports": [{"port": 443, "name": "https"}]}}
    out = strategic_merge_patch(live, patch)
    assert out["spec"]["containers"] == [{"name": "a", "image": "x:2"}]
    assert out["spec"]["ports"] == [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]


def test_three_way_patch_keeps_server_fields_and_removes_dropped_ones() -> None:
    last = {"spec": {"replicas": 2, "paused": False}, "metadata": {"labels": {"a": "1"}}}
    new = {"spec": {"replicas": 3}, "metadata": {"labels": {"a": "1"}}}
    live = {"spec": {"replicas": 2, "paused": False, "strategy": {"type": "RollingUpdate"}},
            "metadata": {"labels": {"a": "1"}, "uid": "u"}}
    assert three_way_patch(last, new, live) == {"spec": {"replicas": 3, "paused": None}}
    # Unchanged since the last apply although the live list carries defaults: no patch.
    last2 = {"spec": {"containers": [{"name": "c", "image": "i"}]}}
    live2 = {"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always"}]}}
    assert three_way_patch(last2, last2, live2) == {}


def test_strategic_merge_follows_the_kind_schema() -> None:
    live = {"spec": {"tolerations": [{"key": "a", "operator": "Exists"}],
                     "containers": [{"name": "c", "image": "x:1", "ports": [{"containerPort": 80}]}]}}
    patch = {"spec": {"tolerations": [{"key": "b", "operator": "Exists"}],
                      "containers": [{"name": "c", "ports": [{"containerPort": 443}]}]}}
    out = strategic_merge_patch(live, patch, "Pod")
    assert out["spec"]["tolerations"] == [{"key": "b", "operator": "Exists"}]  # replaced whole, as Kubernetes does
    assert out["spec"]["containers"] == [{"name": "c", "image": "x:1",
                                          "ports": [{"containerPort": 80}, {"containerPort": 443}]}]
