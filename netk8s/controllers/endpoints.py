"""Endpoints controller: the core/v1 Endpoints object of every Service with a selector.

Kubernetes' endpoint controller keeps one Endpoints object per selecting
Service, named after it; kubectl (``get ep``, ``describe svc``) and older
clients read it. ``desired_subsets`` is pure and follows that controller:

- Pods matching the selector in the Service's namespace count unless they are
  terminal (Succeeded/Failed), have no IP, or are terminating (a
  ``deletionTimestamp``) while ``publishNotReadyAddresses`` is off.
- Each pod contributes, per Service port, its address and the port resolved
  from ``targetPort`` (a named port resolves per pod, by container port name
  and protocol); ready pods (or every pod with ``publishNotReadyAddresses``)
  go to ``addresses``, the others to ``notReadyAddresses``. A headless
  Service without ports lists addresses with no ports.
- Subsets are repacked the way the API's RepackSubsets does: ports offered by
  the same set of (address, ready) pairs share one subset; addresses sort by
  IP string then pod uid.
- More than 1000 addresses are truncated (ready ones kept first) and the
  object is annotated ``endpoints.kubernetes.io/over-capacity: truncated``.

The object's labels are the Service's labels, plus
``service.kubernetes.io/headless`` for a Service without a cluster IP and
``endpoints.kubernetes.io/managed-by: endpoint-controller`` (set by
Kubernetes from 1.33). The controller only deletes Endpoints carrying that
label, so Endpoints a user maintains for a selector-less Service are never
touched. ``endpoints.kubernetes.io/last-change-trigger-time`` records when
the change that triggered a write happened (Service creation or a pod's Ready
transition), as Kubernetes' trigger-time tracker computes it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from netk8s.api import meta
from netk8s.api.resources import ENDPOINTS, PODS, SERVICES
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient, ignore_not_found
from netk8s.controllers.endpointslice import resolve_target_port, selects
from netk8s.errors import ApiError

log = logging.getLogger(__name__)

CONTROLLER_NAME = "endpoint-controller"
MANAGED_BY_LABEL = "endpoints.kubernetes.io/managed-by"
HEADLESS_LABEL = meta.HEADLESS_LABEL
OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
TRUNCATED = "truncated"
MAX_CAPACITY = 1000
_CONFLICT_ATTEMPTS = 3


# -- pure: which pods, which addresses, which subsets ------------------------------------------


def should_pod_be_in_endpoints(pod: dict, include_terminating: bool) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return False
    if not status.get("podIP") and not status.get("podIPs"):
        return False
    return include_terminating or not (pod.get("metadata") or {}).get("deletionTimestamp")


def _service_ip_family(service: dict, pod: dict) -> str:
    spec = service.get("spec") or {}
    families = spec.get("ipFamilies") or []
    if families:
        return str(families[0])
    cluster_ip = spec.get("clusterIP") or ""
    probe = cluster_ip if cluster_ip and cluster_ip != "None" else ((pod.get("status") or {}).get("podIP") or "")
    return "IPv6" if ":" in probe else "IPv4"


def pod_address(service: dict, pod: dict) -> dict | None:
    """The EndpointAddress of ``pod`` for ``service`` (pod IP of the Service's family), or None."""
    status = pod.get("status") or {}
    ips = [str(entry.get("ip", "")) for entry in status.get("podIPs") or [] if isinstance(entry, dict)]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    want_v6 = _service_ip_family(service, pod) == "IPv6"
    ip = next((candidate for candidate in ips if candidate and (":" in candidate) == want_v6), None)
    if ip is None:
        return None
    spec = pod.get("spec") or {}
    address: dict[str, Any] = {"ip": ip}
    if spec.get("hostname") and spec.get("subdomain") == meta.name_of(service) \
            and meta.namespace_of(pod) == meta.namespace_of(service):
        address["hostname"] = spec["hostname"]
    address["nodeName"] = spec.get("nodeName") or ""
    address["targetRef"] = {"kind": "Pod", "namespace": meta.namespace_of(pod), "name": meta.name_of(pod),
                            "uid": meta.uid_of(pod)}
    return address


@dataclass(frozen=True)
class EndpointPort:
    name: str
    port: int
    protocol: str
    app_protocol: str | None = None

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["port"] = self.port
        out["protocol"] = self.protocol
        if self.app_protocol:
            out["appProtocol"] = self.app_protocol
        return out


_NO_PORT = EndpointPort("", -1, "")  # stands for "no ports" (headless Service without ports)


@dataclass
class _Entry:
    """One (address, port, ready) triple before repacking."""

    address: dict
    port: EndpointPort
    ready: bool


def _address_key(address: Mapping[str, Any]) -> tuple[str, str]:
    return str(address.get("ip", "")), str((address.get("targetRef") or {}).get("uid", ""))


def _address_sort_key(address: Mapping[str, Any]) -> tuple[bytes, int, str]:
    # Kubernetes' LessEndpointAddress: IP compared as a string, then target uid (no ref sorts first).
    ref = address.get("targetRef")
    return str(address.get("ip", "")).encode(), 0 if ref is None else 1, str((ref or {}).get("uid", ""))


def _port_sort_key(port: EndpointPort) -> tuple[str, int, str, str]:
    return port.name, port.port, port.protocol, port.app_protocol or ""


def repack(entries: list[_Entry]) -> list[dict]:
    """Group ports by the exact set of (address, ready) pairs offering them, as RepackSubsets does."""
    first_seen: dict[tuple[str, str], dict] = {}
    by_port: dict[EndpointPort, dict[tuple[str, str], bool]] = {}
    for entry in entries:
        key = _address_key(entry.address)
        first_seen.setdefault(key, entry.address)
        readiness = by_port.setdefault(entry.port, {})
        readiness[key] = readiness.get(key, False) or entry.ready  # ready wins over not ready
    groups: dict[frozenset[tuple[tuple[str, str], bool]], list[EndpointPort]] = {}
    for port, readiness in by_port.items():
        ports = groups.setdefault(frozenset(readiness.items()), [])
        if port != _NO_PORT:
            ports.append(port)
    subsets = []
    for members, ports in groups.items():
        ready = sorted((first_seen[k] for k, r in members if r), key=_address_sort_key)
        not_ready = sorted((first_seen[k] for k, r in members if not r), key=_address_sort_key)
        subset: dict[str, Any] = {}
        if ready:
            subset["addresses"] = ready
        if not_ready:
            subset["notReadyAddresses"] = not_ready
        if ports:
            subset["ports"] = [p.to_api() for p in sorted(ports, key=_port_sort_key)]
        subsets.append(subset)
    subsets.sort(key=_subset_sort_key)
    return subsets


def _subset_sort_key(subset: Mapping[str, Any]) -> tuple:
    ports = tuple((p.get("name", ""), p["port"], p["protocol"]) for p in subset.get("ports") or [])
    addresses = tuple(_address_sort_key(a) for a in subset.get("addresses") or [])
    not_ready = tuple(_address_sort_key(a) for a in subset.get("notReadyAddresses") or [])
    return ports, addresses, not_ready


def desired_subsets(service: dict, pods: list[dict]) -> list[dict]:
    """The repacked ``subsets`` of the Endpoints for ``service`` given its namespace's pods."""
    spec = service.get("spec") or {}
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    service_ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    headless = spec.get("clusterIP") == "None"
    entries: list[_Entry] = []
    for pod in pods:
        if not selects(service, pod) or not should_pod_be_in_endpoints(pod, publish_not_ready):
            continue
        address = pod_address(service, pod)
        if address is None:
            continue
        ready = publish_not_ready or meta.pod_is_ready(pod)
        if not service_ports:
            if headless:
                entries.append(_Entry(address, _NO_PORT, ready))
            continue
        for service_port in service_ports:
            target = resolve_target_port(pod, service_port)
            if target is None:
                continue
            port = EndpointPort(str(service_port.get("name") or ""), target,
                                str(service_port.get("protocol") or "TCP"), service_port.get("appProtocol"))
            entries.append(_Entry(address, port, ready))
    return repack(entries)


def truncate_subsets(subsets: list[dict]) -> tuple[list[dict], bool]:
    """Cap the addresses at MAX_CAPACITY, ready ones first, shared out in proportion per subset."""
    total_ready = sum(len(s.get("addresses") or []) for s in subsets)
    total_not_ready = sum(len(s.get("notReadyAddresses") or []) for s in subsets)
    if total_ready + total_not_ready <= MAX_CAPACITY:
        return subsets, False
    truncate_ready = total_ready > MAX_CAPACITY
    budget = MAX_CAPACITY if truncate_ready else MAX_CAPACITY - total_ready
    pool = total_ready if truncate_ready else total_not_ready
    left = budget
    out = []
    for subset in subsets:
        subset = dict(subset)
        field_name = "addresses" if truncate_ready else "notReadyAddresses"
        members = subset.get(field_name) or []
        share = min(-(-len(members) * budget // pool) if pool else 0, left)  # ceil, capped by what is left
        kept = members[:share]
        left -= len(kept)
        if kept:
            subset[field_name] = kept
        else:
            subset.pop(field_name, None)
        if truncate_ready:
            subset.pop("notReadyAddresses", None)
        out.append(subset)
    return out, True


def desired_labels(service: dict) -> dict[str, str]:
    labels = dict(meta.labels_of(service))
    cluster_ip = (service.get("spec") or {}).get("clusterIP") or ""
    if cluster_ip in ("", "None"):
        labels[HEADLESS_LABEL] = ""
    else:
        labels.pop(HEADLESS_LABEL, None)
    labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
    return labels


def _without_resource_versions(subsets: list[dict]) -> list[dict]:
    out = copy.deepcopy(subsets)
    for subset in out:
        for group in ("addresses", "notReadyAddresses"):
            for address in subset.get(group) or []:
                (address.get("targetRef") or {}).pop("resourceVersion", None)
    return out


def subsets_equal(current: list[dict] | None, desired: list[dict]) -> bool:
    """Equal ignoring pods' resourceVersions in targetRefs, as Kubernetes compares them."""
    return _without_resource_versions(current or []) == _without_resource_versions(desired)


# -- trigger time ---------------------------------------------------------------------------------


@dataclass
class _ServiceTriggers:
    pods: dict[str, _dt.datetime] = field(default_factory=dict)
    service: _dt.datetime | None = None


class TriggerTimeTracker:
    """When did the change behind an Endpoints write happen (Kubernetes' TriggerTimeTracker)?

    The first time a Service is seen: its creation time. Afterwards: the
    earliest trigger among the pods whose Ready transition time moved forward
    and the Service if it was re-created; None when nothing moved.
    """

    def __init__(self) -> None:
        self._states: dict[str, _ServiceTriggers] = {}
        self._lock = threading.Lock()

    def compute(self, service: dict, pods: list[dict]) -> _dt.datetime | None:
        key = meta.key_of(service)
        with self._lock:
            known = key in self._states
            previous = self._states.get(key, _ServiceTriggers())
        state = _ServiceTriggers()
        earliest: _dt.datetime | None = None
        for pod in pods:
            ready = meta.get_condition(pod, "Ready")
            moved = meta.parse_time((ready or {}).get("lastTransitionTime"))
            if moved is None:
                continue
            state.pods[meta.name_of(pod)] = moved
            before = previous.pods.get(meta.name_of(pod))
            if before is None or moved > before:
                earliest = moved if earliest is None else min(earliest, moved)
        created = meta.parse_time((service.get("metadata") or {}).get("creationTimestamp"))
        state.service = created
        if created is not None and (previous.service is None or created > previous.service):
            earliest = created if earliest is None else min(earliest, created)
        with self._lock:
            self._states[key] = state
        return created if not known else earliest

    def forget(self, key: str) -> None:
        with self._lock:
            self._states.pop(key, None)


# -- the controller --------------------------------------------------------------------------------


def _up_to_date(current: dict | None, subsets: list[dict], labels: dict[str, str], truncated: bool) -> bool:
    if current is None:
        return False
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    return subsets_equal(current.get("subsets"), subsets) and meta.labels_of(current) == labels \
        and (OVER_CAPACITY_ANNOTATION in annotations) == truncated


def is_managed(endpoints: dict | None) -> bool:
    return endpoints is not None and meta.labels_of(endpoints).get(MANAGED_BY_LABEL) == CONTROLLER_NAME


class EndpointsController(Controller):
    name = CONTROLLER_NAME

    def __init__(self, client: ApiClient) -> None:
        super().__init__(client)
        self.triggers = TriggerTimeTracker()

    def setup(self) -> None:
        self.services = self.informer(SERVICES)
        self.pods = self.informer(PODS)
        self.endpoints = self.informer(ENDPOINTS)
        self.services.add_handler(self._enqueue_object)
        self.pods.add_handler(self._on_pod)
        # Endpoints events also cover start-up (leftovers of deleted Services) and edits by others.
        self.endpoints.add_handler(self._enqueue_object)

    def _enqueue_object(self, event: str, old: dict | None, new: dict | None) -> None:
        obj = new or old
        if obj is not None:
            self.queue.add(meta.key_of(obj))

    def _on_pod(self, event: str, old: dict | None, new: dict | None) -> None:
        for pod in (old, new):
            if pod is None:
                continue
            for service in self.services.list():
                if selects(service, pod):
                    self.queue.add(meta.key_of(service))

    def sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        service = self.services.get(key)
        current = self.endpoints.get(key)
        spec = (service or {}).get("spec") or {}
        if service is None or spec.get("type") == "ExternalName" or not spec.get("selector"):
            # Not ours to fill (any more); remove only what this controller made.
            if service is None:
                self.triggers.forget(key)
            if is_managed(current):
                with ignore_not_found():
                    self.client.delete(ENDPOINTS, name, namespace)
                log.info("%s: deleted endpoints", key)
            return
        pods = [p for p in self.pods.list() if selects(service, p)]
        trigger = self.triggers.compute(service, pods)
        subsets, truncated = truncate_subsets(desired_subsets(service, pods))
        labels = desired_labels(service)
        for attempt in range(_CONFLICT_ATTEMPTS):
            # Checked again after a conflict: the server's copy may already be what we want (written by
            # an earlier sync our cache had not seen yet); rewriting it would drop its trigger time.
            if _up_to_date(current, subsets, labels, truncated):
                return
            try:
                self._write(service, current, subsets, labels, truncated, trigger)
                return
            except ApiError as exc:
                if exc.code not in (404, 409) or attempt == _CONFLICT_ATTEMPTS - 1:
                    raise
                # Our cache was behind (created meanwhile, changed or gone): start from the server's copy.
                try:
                    current = self.client.get(ENDPOINTS, name, namespace)
                except ApiError as get_exc:
                    if get_exc.code != 404:
                        raise
                    current = None

    def _write(self, service: dict, current: dict | None, subsets: list[dict], labels: dict[str, str],
               truncated: bool, trigger: _dt.datetime | None) -> None:
        namespace, name = meta.namespace_of(service), meta.name_of(service)
        if current is None:
            obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Endpoints",
                                   "metadata": {"name": name, "namespace": namespace}}
        else:
            obj = copy.deepcopy(current)
        md = obj.setdefault("metadata", {})
        md["labels"] = labels
        annotations = dict(md.get("annotations") or {})
        if trigger is not None:
            annotations[TRIGGER_TIME_ANNOTATION] = meta.format_time(trigger)
        else:
            annotations.pop(TRIGGER_TIME_ANNOTATION, None)
        if truncated:
            annotations[OVER_CAPACITY_ANNOTATION] = TRUNCATED
        else:
            annotations.pop(OVER_CAPACITY_ANNOTATION, None)
        if annotations:
            md["annotations"] = annotations
        else:
            md.pop("annotations", None)
        if subsets:
            obj["subsets"] = subsets
        else:
            obj.pop("subsets", None)
        ready = sum(len(s.get("addresses") or []) for s in subsets)
        not_ready = sum(len(s.get("notReadyAddresses") or []) for s in subsets)
        if current is None:
            self.client.create(ENDPOINTS, obj, namespace)
            log.info("%s/%s: created endpoints (%d ready, %d not ready)", namespace, name, ready, not_ready)
        else:
            self.client.update(ENDPOINTS, obj)
            log.info("%s/%s: updated endpoints (%d ready, %d not ready)", namespace, name, ready, not_ready)
