"""kubectl's rollout status messages, target parsing, scaling through the scale subresource, and resource lists."""

from __future__ import annotations

import pytest

from netk8s.api.resources import DEPLOYMENTS, REPLICASETS
from netk8s.client.rest import ApiClient
from netk8s.client.rollout import SCALABLE, deployment_status, parse_target, scale, wait_rollout
from netk8s.errors import NetK8sError, UserError


def deployment(generation: int = 2, observed: int = 2, replicas: int = 3, updated: int = 3, total: int = 3,
               available: int = 3, reason: str | None = None) -> dict:
    status: dict = {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                    "availableReplicas": available}
    if reason:
        status["conditions"] = [{"type": "Progressing", "status": "False", "reason": reason}]
    return {"metadata": {"name": "web", "generation": generation}, "spec": {"replicas": replicas}, "status": status}


@pytest.mark.parametrize("obj,message,done", [
    (deployment(generation=3), "Waiting for deployment spec update to be observed...", False),
    (deployment(updated=1), 'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been '
                            "updated...", False),
    (deployment(total=5), 'Waiting for deployment "web" rollout to finish: 2 old replicas are pending '
                          "termination...", False),
    (deployment(available=2), 'Waiting for deployment "web" rollout to finish: 2 of 3 updated replicas are '
                              "available...", False),
    (deployment(), 'deployment "web" successfully rolled out', True),
    (deployment(replicas=0, updated=0, total=0, available=0), 'deployment "web" successfully rolled out', True),
])
def test_deployment_status_messages_are_kubectls(obj: dict, message: str, done: bool) -> None:
    status = deployment_status(obj)
    assert (status.message, status.done, status.failed) == (message, done, False)


def test_progress_deadline_exceeded_fails() -> None:
    status = deployment_status(deployment(updated=1, reason="ProgressDeadlineExceeded"))
    assert status.failed and status.message == 'deployment "web" exceeded its progress deadline'


@pytest.mark.parametrize("words,expected", [
    (["deployment/web"], (DEPLOYMENTS, "web")),
    (["deployment", "web"], (DEPLOYMENTS, "web")),
    (["deploy/web"], (DEPLOYMENTS, "web")),
    (["deployments.apps", "web"], (DEPLOYMENTS, "web")),
    (["rs/web-1"], (REPLICASETS, "web-1")),
])
def test_targets_in_kubectls_forms(words: list[str], expected: tuple) -> None:
    assert parse_target(words, "scale", SCALABLE) == expected


@pytest.mark.parametrize("words,message", [
    (["web"], "scale: give TYPE NAME or TYPE/NAME"),
    (["pod/web"], "scale: 'pod' is not supported; use deployment or replicaset"),
    (["deployment/"], "scale: 'deployment' is not supported"),
])
def test_bad_targets(words: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_target(words, "scale", SCALABLE)


def web(replicas: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "netk8s/echo"}]}}}}


def test_scale_through_the_subresource_with_a_precondition(api: ApiClient) -> None:
    api.create(DEPLOYMENTS, web(2), "default")
    scaled = scale(api, DEPLOYMENTS, "web", "default", 4)
    assert scaled["kind"] == "Scale" and scaled["spec"]["replicas"] == 4
    assert api.get(DEPLOYMENTS, "web", "default")["spec"]["replicas"] == 4
    with pytest.raises(NetK8sError, match="Expected replicas to be 2, was 4"):
        scale(api, DEPLOYMENTS, "web", "default", 1, current=2)
    scale(api, DEPLOYMENTS, "web", "default", 1, current=4)
    assert api.get(DEPLOYMENTS, "web", "default")["spec"]["replicas"] == 1
    with pytest.raises(UserError, match="--replicas -1 must be 0 or more"):
        scale(api, DEPLOYMENTS, "web", "default", -1)


def test_wait_rollout_reports_each_new_message_and_times_out(api: ApiClient) -> None:
    api.create(DEPLOYMENTS, web(2), "default")  # no controller runs here: the rollout never moves
    seen: list[str] = []
    with pytest.raises(NetK8sError, match="timed out waiting for the condition"):
        wait_rollout(api, "web", "default", 0.3, seen.append, interval=0.05)
    assert seen == ["Waiting for deployment spec update to be observed..."]
    once: list[str] = []
    status = wait_rollout(api, "web", "default", None, once.append, watch=False)
    assert not status.done and once == seen
    api.patch(DEPLOYMENTS, "web", {"status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                                              "availableReplicas": 2}}, "default", subresource="status")
    assert wait_rollout(api, "web", "default", 5, seen.append).done
    assert seen[-1] == 'deployment "web" successfully rolled out'


def test_resource_lists_as_kubectl_reads_them() -> None:
    from netk8s.api.resources import PODS, SERVICES, resolve_list

    assert resolve_list("pods,svc") == [PODS, SERVICES]
    assert resolve_list("po,pods,Service") == [PODS, SERVICES]  # each type once
    assert [r.plural for r in resolve_list("all")] == ["pods", "services", "deployments", "replicasets"]
    with pytest.raises(UserError, match='an empty name between commas'):
        resolve_list("pods,,svc")
    with pytest.raises(UserError, match='the server doesn\'t have a resource type "bogus"'):
        resolve_list("pods,bogus")
