"""EndpointSlice controller: the endpoints of every Service with a selector.

``desired_slices`` is pure: from a Service and its namespace's pods it groups
endpoints by their resolved port mapping (a named ``targetPort`` resolves per
pod, so pods that disagree land in different slices, as in Kubernetes) with
ready/serving/terminating conditions. The controller reconciles slices
labelled ``kubernetes.io/service-name`` and managed by it: updates in place,
creates missing ones, deletes surplus ones.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from netk8s.api import meta
from netk8s.api.resources import ENDPOINTSLICES, PODS, SERVICES
from netk8s.client.controller import Controller
from netk8s.client.rest import ignore_not_found
from netk8s.errors import ApiError

log = logging.getLogger(__name__)

SLICES = ENDPOINTSLICES
SERVICE_NAME_LABEL = meta.SERVICE_NAME_LABEL
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100


def slice_suffix(service_uid: str, index: int) -> str:
    digest = hashlib.sha256(f"{service_uid}/{index}".encode()).digest()
    return "".join(meta.SUFFIX_ALPHABET[b % len(meta.SUFFIX_ALPHABET)] for b in digest[:5])


@dataclass(frozen=True)
class SlicePort:
    name: str
    port: int
    protocol: str

    def to_api(self) -> dict:
        return {"name": self.name, "port": self.port, "protocol": self.protocol}


def resolve_target_port(pod: dict, service_port: dict) -> int | None:
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol", "TCP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for cport in container.get("ports") or []:
            if cport.get("name") == target and cport.get("protocol", "TCP") == protocol:
                return int(cport["containerPort"])
    return None


def _endpoint(pod: dict, publish_not_ready: bool) -> dict:
    terminating = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    ready = meta.pod_is_ready(pod)
    ip = (pod.get("status") or {}).get("podIP")
    ep = {
        "addresses": [ip],
        "conditions": {"ready": (ready or publish_not_ready) and not terminating, "serving": ready or publish_not_ready,
                       "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": meta.namespace_of(pod), "name": meta.name_of(pod),
                      "uid": meta.uid_of(pod)},
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        ep["nodeName"] = node
    return ep


def selects(service: dict, pod: dict) -> bool:
    """True if the Service's selector (a plain map; empty selects nothing) picks the pod in its namespace.

    The same answer as ``LabelSelector.from_map(selector).matches(labels)``, without building a
    selector: it runs for every Service on every pod event.
    """
    selector = (service.get("spec") or {}).get("selector")
    if not selector or meta.namespace_of(pod) != meta.namespace_of(service):
        return False
    labels = meta.labels_of(pod)
    return all(labels.get(key) == str(value) for key, value in selector.items())


def desired_slices(service: dict, pods: list[dict]) -> list[tuple[tuple[SlicePort, ...], list[dict]]]:
    """(ports, endpoints) groups for a Service with a selector; sorted, endpoints by IP."""
    spec = service.get("spec") or {}
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    groups: dict[tuple[SlicePort, ...], list[dict]] = {}
    for pod in pods:
        if not selects(service, pod):
            continue
        status = pod.get("status") or {}
        if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        pod_ports: list[SlicePort] = []
        for sp in spec.get("ports") or []:
            target = resolve_target_port(pod, sp)
            if target is not None:
                pod_ports.append(SlicePort(sp.get("name", ""), target, sp.get("protocol", "TCP")))
        groups.setdefault(tuple(pod_ports), []).append(_endpoint(pod, publish_not_ready))
    out: list[tuple[tuple[SlicePort, ...], list[dict]]] = []
    for ports, endpoints in sorted(groups.items(), key=lambda kv: [p.to_api() for p in kv[0]].__repr__()):
        endpoints.sort(key=lambda e: tuple(int(x) for x in e["addresses"][0].split(".")))
        for i in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
            out.append((ports, endpoints[i:i + MAX_ENDPOINTS_PER_SLICE]))
    if not out and spec.get("ports"):
        # A service with no endpoints still gets one empty slice (ports unset), as Kubernetes does.
        out.append(((), []))
    return out


class EndpointSliceController(Controller):
    name = "endpointslice-controller"

    def setup(self) -> None:
        self.services = self.informer(SERVICES)
        self.pods = self.informer(PODS)
        self.slices = self.informer(SLICES, label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}")
        self.services.add_handler(lambda e, o, n: self.queue.add(meta.key_of(n or o)))  # type: ignore[arg-type]
        self.pods.add_handler(self._on_pod)
        self.slices.add_handler(self._on_slice)

    def _on_pod(self, event: str, old: dict | None, new: dict | None) -> None:
        for pod in (old, new):
            if pod is None:
                continue
            for svc in self.services.list():
                if selects(svc, pod):
                    self.queue.add(meta.key_of(svc))

    def _on_slice(self, event: str, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        svc_name = meta.labels_of(obj).get(SERVICE_NAME_LABEL)
        if svc_name:
            self.queue.add(f"{meta.namespace_of(obj)}/{svc_name}")

    def sync(self, key: str) -> None:
        ns, name = key.split("/", 1)
        service = self.services.get(key)
        existing = [s for s in self.slices.list()
                    if meta.namespace_of(s) == ns and meta.labels_of(s).get(SERVICE_NAME_LABEL) == name]
        if service is None or not (service.get("spec") or {}).get("selector") \
                or (service.get("spec") or {}).get("type") == "ExternalName":
            for s in existing:
                self._delete(s)
            return
        desired = desired_slices(service, self.pods.list())
        existing.sort(key=meta.name_of)
        for i, (ports, endpoints) in enumerate(desired):
            body = {
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [p.to_api() for p in ports] if ports else None,
            }
            if i < len(existing):
                current = existing[i]
                if all(current.get(k) == v for k, v in body.items()):
                    continue
                updated = dict(current, **{k: v for k, v in body.items() if v is not None})
                if body["ports"] is None:
                    updated.pop("ports", None)
                self.client.update(SLICES, updated)
            else:
                obj: dict[str, Any] = {
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    # A name derived from the Service's uid and the slice's index (instead of
                    # generateName) makes a create retried before our cache caught up a 409, not a twin.
                    "metadata": {"name": f"{name}-{slice_suffix(meta.uid_of(service), i)}", "namespace": ns,
                                 "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                                 "ownerReferences": [meta.owner_reference(service)]},
                    **{k: v for k, v in body.items() if v is not None},
                }
                try:
                    created = self.client.create(SLICES, obj, ns)
                except ApiError as exc:
                    if exc.code != 409:
                        raise
                    current = self.client.get(SLICES, obj["metadata"]["name"], ns)
                    self.client.update(SLICES, dict(current, **{k: v for k, v in body.items() if v is not None}))
                    continue
                log.info("%s: created endpointslice %s with %d endpoints", key, meta.name_of(created), len(endpoints))
        for s in existing[len(desired):]:
            self._delete(s)

    def _delete(self, slice_obj: dict) -> None:
        with ignore_not_found():
            self.client.delete(SLICES, meta.name_of(slice_obj), meta.namespace_of(slice_obj))
