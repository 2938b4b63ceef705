"""Label and field selector parsing and matching."""

from __future__ import annotations

import pytest

from netk8s.api.selectors import (
    LabelSelector,
    parse_field_selector,
    parse_label_selector,
)
from netk8s.errors import ValidationError


@pytest.mark.parametrize("text,labels,expected", [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "db"}, False),
    ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False),
    ("tier in (a, b)", {"tier": "b"}, True),
    ("tier in (a,b)", {"tier": "c"}, False),
    ("tier notin (a,b)", {}, True),
    ("canary", {"canary": ""}, True),
    ("!canary", {"canary": "x"}, False),
    ("app=web,!canary,tier in (x)", {"app": "web", "tier": "x"}, True),
    ("", {"anything": "x"}, True),
])
def test_label_selector_syntax(text: str, labels: dict, expected: bool) -> None:
    assert parse_label_selector(text).matches(labels) is expected


def test_bad_label_selector_names_the_problem() -> None:
    with pytest.raises(ValidationError, match="labelSelector"):
        parse_label_selector("tier in a,b")


def test_match_labels_and_expressions() -> None:
    sel = LabelSelector.from_dict({"matchLabels": {"app": "web"},
                                   "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]})
    assert sel.matches({"app": "web", "env": "dev"})
    assert not sel.matches({"app": "web", "env": "prod"})
    with pytest.raises(ValidationError, match=r"matchExpressions\[0\]\.operator"):
        LabelSelector.from_dict({"matchExpressions": [{"key": "a", "operator": "Like"}]})


def test_service_selector_empty_selects_nothing() -> None:
    assert not LabelSelector.from_map({}).matches({"a": "b"})
    assert LabelSelector.from_map({"a": "b"}).matches({"a": "b", "c": "d"})


def test_field_selector() -> None:
    sel = parse_field_selector("spec.nodeName=worker,status.phase!=Failed")
    assert sel.matches({"spec": {"nodeName": "worker"}, "status": {"phase": "Running"}})
    assert not sel.matches({"spec": {"nodeName": "worker"}, "status": {"phase": "Failed"}})
    assert not sel.matches({"spec": {}})
    with pytest.raises(ValidationError):
        parse_field_selector("spec.nodeName")
