"""``rollout status`` and ``scale`` as kubectl does them, on top of the REST client.

``deployment_status`` is pure: kubectl's DeploymentStatusViewer, the message
for one look at a Deployment and whether the rollout is done (or failed past
its progress deadline). ``wait_rollout`` looks at the Deployment every half
second and reports each new message until the rollout is done, failed or out
of time. ``scale``
sets ``spec.replicas`` through the ``scale`` subresource, with kubectl's
``--current-replicas`` precondition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from netk8s.api import meta
from netk8s.api.resources import DEPLOYMENTS, REPLICASETS, ResourceType, resolve
from netk8s.client.rest import ApiClient
from netk8s.errors import NetK8sError, UserError

SCALABLE = {"deployment": DEPLOYMENTS, "replicaset": REPLICASETS}


@dataclass(frozen=True)
class RolloutStatus:
    message: str
    done: bool
    failed: bool = False


def deployment_status(deployment: dict) -> RolloutStatus:
    """What ``kubectl rollout status`` says after one look at ``deployment``."""
    name = meta.name_of(deployment)
    md, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
    if int(md.get("generation", 0)) > int(status.get("observedGeneration", 0)):
        return RolloutStatus("Waiting for deployment spec update to be observed...", False)
    progressing = meta.get_condition(deployment, "Progressing")
    if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        return RolloutStatus(f'deployment "{name}" exceeded its progress deadline', False, failed=True)
    want = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    replicas = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    if updated < want:
        return RolloutStatus(f"{waiting}{updated} out of {want} new replicas have been updated...", False)
    if replicas > updated:
        return RolloutStatus(f"{waiting}{replicas - updated} old replicas are pending termination...", False)
    if available < updated:
        return RolloutStatus(f"{waiting}{available} of {updated} updated replicas are available...", False)
    return RolloutStatus(f'deployment "{name}" successfully rolled out', True)


def parse_target(words: list[str], verb: str, kinds: dict[str, ResourceType]) -> tuple[ResourceType, str]:
    """``TYPE NAME`` or ``TYPE/NAME`` (kubectl's forms) to a resource and a name."""
    if len(words) == 1 and "/" in words[0]:
        kind, name = words[0].split("/", 1)
    elif len(words) == 2:
        kind, name = words
    else:
        raise UserError(f"{verb}: give TYPE NAME or TYPE/NAME, e.g. deployment/web")
    try:
        resource = resolve(kind)  # kubectl's names: deploy, deployments, deployment.apps, rs, ...
    except UserError:
        resource = None
    if resource is None or resource.singular not in kinds or not name:
        raise UserError(f"{verb}: {kind!r} is not supported; use {' or '.join(sorted(kinds))}")
    return resource, name


def scale(client: ApiClient, resource: ResourceType, name: str, namespace: str, replicas: int,
          current: int | None = None) -> dict:
    """Set ``spec.replicas`` through the scale subresource; ``current`` must match first when given."""
    if replicas < 0:
        raise UserError(f"scale: --replicas {replicas} must be 0 or more")
    if current is not None:
        scale_now = client.get(resource, name, namespace, subresource="scale")
        found = int((scale_now.get("spec") or {}).get("replicas", 0))
        if found != current:
            raise NetK8sError(f"Expected replicas to be {current}, was {found}")
        body = dict(scale_now, spec={"replicas": replicas})
        return client.update(resource, body, subresource="scale")
    return client.patch(resource, name, {"spec": {"replicas": replicas}}, namespace, subresource="scale")


def wait_rollout(client: ApiClient, name: str, namespace: str, timeout: float | None,
                 report: Callable[[str], None], watch: bool = True, interval: float = 0.5) -> RolloutStatus:
    """Report each new status message of Deployment ``name`` until its rollout is done (returned),
    failed (NetK8sError) or ``timeout`` seconds passed (NetK8sError); one look without ``watch``."""
    deadline = None if timeout is None or timeout <= 0 else time.monotonic() + timeout
    last = ""
    while True:
        status = deployment_status(client.get(DEPLOYMENTS, name, namespace))
        if status.failed:
            raise NetK8sError(status.message)
        if status.message != last:
            report(status.message)
            last = status.message
        if status.done or not watch:
            return status
        if deadline is not None and time.monotonic() >= deadline:
            raise NetK8sError("timed out waiting for the condition")
        time.sleep(interval)
