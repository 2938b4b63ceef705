"""kube-proxy's view of the cluster: service ports and endpoints as frozen values.

``build_service_ports`` turns v1 Services into one ``ServicePort`` per proxied
port; ``build_endpoints`` turns discovery.k8s.io/v1 EndpointSlices into
endpoints keyed by the same service port name string kube-proxy uses
(``namespace/name:portname``, or ``namespace/name`` for an unnamed port). The
renderers take only these values, never API dicts. Objects the proxy cannot
use (headless and ExternalName services, non-IPv4 slices, malformed entries)
are skipped here, with a debug log, so one bad object never blocks a sync.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable

from netk8s.api import meta
from netk8s.api.network import Protocol
from netk8s.errors import ValidationError

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = meta.SERVICE_NAME_LABEL
# Services carrying these labels are not ours to proxy (another proxy owns them, or they are headless).
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = meta.HEADLESS_LABEL


class ServiceType(str, Enum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


def service_port_name(namespace: str, name: str, port_name: str) -> str:
    """kube-proxy's ServicePortName string: ``ns/name:port``, or ``ns/name`` when the port is unnamed."""
    base = f"{namespace}/{name}"
    return f"{base}:{port_name}" if port_name else base


@dataclass(frozen=True)
class ServicePort:
    """One proxied port of a service with a cluster IP, with everything kube-proxy renders for it."""

    namespace: str
    name: str
    port_name: str
    protocol: Protocol
    cluster_ip: IPv4Address
    port: int
    node_port: int | None = None
    service_type: ServiceType = ServiceType.CLUSTER_IP
    external_ips: tuple[IPv4Address, ...] = ()
    load_balancer_ips: tuple[IPv4Address, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[IPv4Network, ...] = ()
    external_policy_local: bool = False  # externalTrafficPolicy: Local (NodePort, LB, externalIPs)
    internal_policy_local: bool = False  # internalTrafficPolicy: Local
    health_check_node_port: int | None = None
    session_affinity_seconds: int | None = None  # sessionAffinity: ClientIP -> timeoutSeconds

    @property
    def service_port_name(self) -> str:
        return service_port_name(self.namespace, self.name, self.port_name)

    @property
    def has_external(self) -> bool:
        """Traffic can arrive from outside the cluster (externalTrafficPolicy applies)."""
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def external_local(self) -> bool:
        """externalTrafficPolicy Local in effect (kube-proxy ignores it on ports with no external destination)."""
        return self.external_policy_local and self.has_external

    @property
    def uses_cluster_endpoints(self) -> bool:
        """Some traffic goes to cluster-wide endpoints: internal policy Cluster, or any external
        destination (even with externalTrafficPolicy Local, pod and node traffic short-circuits to them)."""
        return not self.internal_policy_local or self.has_external

    @property
    def uses_local_endpoints(self) -> bool:
        """Some traffic goes only to this node's endpoints (a Local traffic policy in effect)."""
        return self.internal_policy_local or self.external_local


@dataclass(frozen=True)
class Endpoint:
    """One backend address of a service port, as an EndpointSlice reports it."""

    ip: IPv4Address
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    is_local: bool = False

    @property
    def address(self) -> str:
        """``ip:port``, the string kube-proxy hashes into the KUBE-SEP chain name."""
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class EndpointCategories:
    """The endpoints one service port uses on one node, as kube-proxy's CategorizeEndpoints splits them.

    ``cluster``: endpoints for Cluster traffic policy (ready ones; when none is
    ready, serving+terminating ones). ``local``: this node's endpoints for
    Local policy (ready local ones; when none, serving+terminating local
    ones). ``reachable``: the union, each endpoint once, in input order: the
    endpoints that get a KUBE-SEP chain. ``has_any``: some usable endpoint
    exists anywhere in the cluster (else traffic is rejected).
    """

    cluster: tuple[Endpoint, ...]
    local: tuple[Endpoint, ...]
    reachable: tuple[Endpoint, ...]
    has_any: bool


def _serving_terminating(ep: Endpoint) -> bool:
    return ep.serving and ep.terminating


def categorize_endpoints(sp: ServicePort, endpoints: Iterable[Endpoint]) -> EndpointCategories:
    """Split ``endpoints`` into the Cluster and Local sets ``sp`` uses (no topology hints)."""
    eps = list(endpoints)
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    has_any = False
    if sp.uses_cluster_endpoints:
        cluster = [ep for ep in eps if ep.ready]
        if not cluster:
            # Fall back to endpoints that are shutting down but still serve, so
            # connections during a rollout are not refused.
            cluster = [ep for ep in eps if _serving_terminating(ep)]
        has_any = bool(cluster)
    if sp.uses_local_endpoints:
        has_any = has_any or any(ep.ready or _serving_terminating(ep) for ep in eps)
        local = [ep for ep in eps if ep.is_local and ep.ready]
        if not local:
            local = [ep for ep in eps if ep.is_local and _serving_terminating(ep)]
    if not sp.uses_local_endpoints:
        reachable = cluster
    elif not sp.uses_cluster_endpoints:
        reachable = local
    else:
        chosen = {id(ep) for ep in cluster} | {id(ep) for ep in local}
        reachable = [ep for ep in eps if id(ep) in chosen]
    return EndpointCategories(tuple(cluster), tuple(local), tuple(reachable), has_any)


@dataclass(frozen=True)
class ProxyConfig:
    """Per-node settings of one kube-proxy."""

    node_name: str
    node_ip: IPv4Address
    cluster_cidr: IPv4Network | None = None
    masquerade_bit: int = 14
    # --iptables-localhost-nodeports (default true): NodePorts answer on 127.0.0.1 too (route_localnet=1,
    # set by the node runtime), guarded by the "block incoming localnet connections" rule.
    localhost_node_ports: bool = True
    masquerade_all: bool = False  # --masquerade-all: SNAT all traffic to cluster IPs

    def __post_init__(self) -> None:
        if not 0 <= self.masquerade_bit <= 31:
            raise ValidationError("masqueradeBit", f"must be between 0 and 31, got {self.masquerade_bit}")

    @property
    def masquerade_mark(self) -> str:
        """The fwmark bit for traffic needing SNAT, as iptables prints it ("0x4000" for bit 14)."""
        return f"{1 << self.masquerade_bit:#x}"


def _protocol(value: object) -> Protocol | None:
    try:
        return Protocol(value if value is not None else "TCP")
    except ValueError:
        return None


def _port_number(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return None
    return value


def build_service_ports(services: Iterable[dict]) -> list[ServicePort]:
    """Service ports kube-proxy programs, sorted by (namespace, name, port name, protocol).

    Headless services (clusterIP None), ExternalName services and services
    without an IPv4 cluster IP get no rules, so they yield no ports.
    """
    result: set[ServicePort] = set()
    for svc in services:
        key = meta.key_of(svc)
        spec = svc.get("spec") or {}
        try:
            svc_type = ServiceType(spec.get("type") or "ClusterIP")
        except ValueError:
            log.debug("service %s: unknown spec.type %r, skipped", key, spec.get("type"))
            continue
        if svc_type is ServiceType.EXTERNAL_NAME:
            continue
        labels = meta.labels_of(svc)
        if SERVICE_PROXY_NAME_LABEL in labels or HEADLESS_LABEL in labels:
            log.debug("service %s: labelled for another proxy or headless, skipped", key)
            continue
        raw_ip = spec.get("clusterIP")
        if not raw_ip or raw_ip == "None":
            continue
        try:
            cluster_ip = ipaddress.ip_address(raw_ip)
        except ValueError:
            log.debug("service %s: spec.clusterIP %r is not an IP address, skipped", key, raw_ip)
            continue
        if not isinstance(cluster_ip, IPv4Address):
            continue
        externals = _addresses(spec.get("externalIPs") or [], key, "spec.externalIPs")
        lb_ips = _addresses([i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {})
                             .get("ingress") or [] if isinstance(i, dict) and i.get("ip")], key,
                            "status.loadBalancer.ingress")
        ranges = _networks(spec.get("loadBalancerSourceRanges") or [], key)
        affinity = None
        if spec.get("sessionAffinity") == "ClientIP":
            config = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
            affinity = int(config.get("timeoutSeconds") or DEFAULT_AFFINITY_SECONDS)
        extras = dict(
            external_ips=externals,
            load_balancer_ips=lb_ips if svc_type is ServiceType.LOAD_BALANCER else (),
            load_balancer_source_ranges=ranges if svc_type is ServiceType.LOAD_BALANCER else (),
            external_policy_local=spec.get("externalTrafficPolicy") == "Local",
            internal_policy_local=spec.get("internalTrafficPolicy") == "Local",
            health_check_node_port=_port_number(spec.get("healthCheckNodePort")),
            session_affinity_seconds=affinity,
        )
        for i, port in enumerate(spec.get("ports") or []):
            if not isinstance(port, dict):
                continue
            protocol = _protocol(port.get("protocol"))
            number = _port_number(port.get("port"))
            if protocol is None or number is None:
                log.debug("service %s: spec.ports[%d] has no usable protocol/port, skipped", key, i)
                continue
            node_port = _port_number(port.get("nodePort"))
            result.add(ServicePort(
                namespace=meta.namespace_of(svc), name=meta.name_of(svc), port_name=port.get("name") or "",
                protocol=protocol, cluster_ip=cluster_ip, port=number, node_port=node_port,
                service_type=svc_type, **extras,  # type: ignore[arg-type]
            ))
    return sorted(result, key=lambda p: (p.namespace, p.name, p.port_name, p.protocol.value))


DEFAULT_AFFINITY_SECONDS = 10800  # kube-proxy's default ClientIP affinity timeout (3 hours)


def _addresses(values: list, key: str, field: str) -> tuple[IPv4Address, ...]:
    out = []
    for value in values:
        try:
            out.append(IPv4Address(value))
        except (ValueError, TypeError):
            log.debug("service %s: %s entry %r is not an IPv4 address, skipped", key, field, value)
    return tuple(sorted(set(out)))


def _networks(values: list, key: str) -> tuple[IPv4Network, ...]:
    out = []
    for value in values:
        try:
            out.append(IPv4Network(str(value).strip(), strict=False))
        except ValueError:
            log.debug("service %s: loadBalancerSourceRanges entry %r is not an IPv4 CIDR, skipped", key, value)
    return tuple(sorted(set(out)))


def _condition(conditions: dict, name: str, default: bool) -> bool:
    # EndpointConditions: a missing (nil) condition means "unknown", which
    # consumers treat as ready/serving and not terminating.
    value = conditions.get(name)
    return default if value is None else bool(value)


def build_endpoints(slices: Iterable[dict], node_name: str) -> dict[str, list[Endpoint]]:
    """Endpoints per service port name, each list sorted by (ip, port) for stable rendering.

    Only IPv4 slices labelled ``kubernetes.io/service-name`` count. Each slice
    port is matched to the service port of the same name; an endpoint listed
    by several slices appears once (a ready copy wins). Readiness is recorded,
    not filtered: renderers decide which endpoints carry traffic.
    """
    merged: dict[str, dict[tuple[IPv4Address, int], Endpoint]] = {}
    for eps in slices:
        service = meta.labels_of(eps).get(SERVICE_NAME_LABEL)
        if not service or eps.get("addressType") != "IPv4":
            continue
        namespace = meta.namespace_of(eps)
        entries: list[tuple[IPv4Address, dict, str | None]] = []
        for ep in eps.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            try:
                # kube-proxy uses the first address of an endpoint; the rest are aliases.
                ip = ipaddress.IPv4Address(addresses[0])
            except (IndexError, ValueError):
                log.debug("endpointslice %s: endpoint %r has no IPv4 address, skipped", meta.key_of(eps), ep)
                continue
            entries.append((ip, ep.get("conditions") or {}, ep.get("nodeName")))
        for port in eps.get("ports") or []:
            number = _port_number((port or {}).get("port"))
            if number is None:
                continue
            spn = service_port_name(namespace, service, port.get("name") or "")
            bucket = merged.setdefault(spn, {})
            for ip, conditions, ep_node in entries:
                ready = _condition(conditions, "ready", True)
                endpoint = Endpoint(
                    ip=ip, port=number, ready=ready,
                    serving=_condition(conditions, "serving", ready),
                    terminating=_condition(conditions, "terminating", False),
                    node_name=ep_node, is_local=ep_node is not None and ep_node == node_name,
                )
                previous = bucket.get((ip, number))
                if previous is None or (endpoint.ready and not previous.ready):
                    bucket[(ip, number)] = endpoint
    return {spn: [bucket[k] for k in sorted(bucket)] for spn, bucket in merged.items()}
