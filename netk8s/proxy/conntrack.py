"""Which UDP conntrack entries kube-proxy must clear after a sync (pure: values in, filters out).

UDP has no connection teardown: a conntrack entry that DNATs a client's flow
to a backend lives on (and keeps steering every new datagram of that flow) for
as long as the client keeps sending, even after the backend is gone. kube-proxy
therefore deletes, after each successful sync, the UDP entries that no longer
match the rules (pkg/proxy/conntrack). ``plan_cleanup`` computes the same set
from the state before and after a sync:

- an endpoint that was serving and is no longer: entries to each of the service
  port's frontends (cluster IP, external IPs, load balancer IPs, each with the
  service port; and the node port) whose DNAT destination (the reply source)
  is that endpoint;
- a frontend that went away (service port deleted, external or load balancer IP
  removed, node port changed): every entry to it;
- a service port that goes from no serving endpoint to some ("newly active"):
  every entry to its frontends, since datagrams sent while it had no endpoint
  left un-NATed entries that would otherwise swallow the flow.

TCP and SCTP need none of this (their entries end with the connection). The
filters are rendered as ``conntrack -D`` arguments by ``ConntrackFilter.args``;
``netk8s.kernel.conntrack`` runs them inside the node's namespace.
"""

from __future__ import annotations

import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from netk8s.api.network import Protocol
from netk8s.proxy.model import Endpoint, ServicePort


class ProxyStateLike(typing.Protocol):
    """What one sync programmed: service ports and their endpoints by service port name.

    ``netk8s.proxy.backend.ProxyState``, which the proxier builds each sync, is one.
    """

    @property
    def service_ports(self) -> Sequence[ServicePort]: ...

    @property
    def endpoints(self) -> Mapping[str, Sequence[Endpoint]]: ...


@dataclass(frozen=True)
class ConntrackFilter:
    """One ``conntrack -D`` selection: the original destination (IP and/or port) and the DNAT target.

    ``dst_nat`` is the address the flow was DNATed to, i.e. the reply source:
    the endpoint. ``reason`` explains the filter in logs and is not part of equality.
    """

    protocol: Protocol
    orig_dst: IPv4Address | None = None
    orig_port_dst: int | None = None
    dst_nat: IPv4Address | None = None
    reason: str = field(default="", compare=False)

    def args(self) -> list[str]:
        """Arguments after ``conntrack -D``."""
        out = ["-p", self.protocol.lowercase]
        if self.orig_dst is not None:
            out += ["--orig-dst", str(self.orig_dst)]
        if self.orig_port_dst is not None:
            out += ["--orig-port-dst", str(self.orig_port_dst)]
        if self.dst_nat is not None:
            out += ["--dst-nat", str(self.dst_nat)]
        return out

    def __str__(self) -> str:
        return " ".join(self.args())


def _frontends(port: ServicePort | None) -> set[tuple[IPv4Address, int]]:
    """(IP, port) pairs a client can address the service port by (node ports aside)."""
    if port is None:
        return set()
    ips = {port.cluster_ip, *port.external_ips, *port.load_balancer_ips}
    return {(ip, port.port) for ip in ips}


def _node_ports(port: ServicePort | None) -> set[int]:
    return {port.node_port} if port is not None and port.node_port else set()


def _serving_ips(state: ProxyStateLike | None, spn: str) -> set[IPv4Address]:
    # kube-proxy compares endpoint IPs, not ip:port: a backend whose port changed is still the same backend.
    if state is None:
        return set()
    return {ep.ip for ep in state.endpoints.get(spn, ()) if ep.serving}


def _udp_ports(state: ProxyStateLike | None, only: Collection[str] | None) -> dict[str, ServicePort]:
    if state is None:
        return {}
    return {sp.service_port_name: sp for sp in state.service_ports
            if sp.protocol is Protocol.UDP and (only is None or f"{sp.namespace}/{sp.name}" in only)}


def plan_cleanup(old: ProxyStateLike | None, new: ProxyStateLike,
                 only: Collection[str] | None = None) -> list[ConntrackFilter]:
    """The conntrack entries to delete after a sync moved the node from ``old`` to ``new``.

    ``old`` is None on the first sync: everything is then "newly active", which
    clears entries left from before the proxy (re)started, as kube-proxy does.
    ``only``: the services (``namespace/name``) whose ports or endpoints
    changed, as the proxier knows them; the others cannot need a clean-up, so
    a sync at 10,000 services does not look at every UDP port.
    """
    old_ports, new_ports = _udp_ports(old, only), _udp_ports(new, only)
    filters: set[ConntrackFilter] = set()
    udp = Protocol.UDP
    for spn in sorted(old_ports.keys() | new_ports.keys()):
        before, after = old_ports.get(spn), new_ports.get(spn)
        old_fronts, new_fronts = _frontends(before), _frontends(after)
        old_nodeports, new_nodeports = _node_ports(before), _node_ports(after)
        for ip, port in old_fronts - new_fronts:
            filters.add(ConntrackFilter(udp, ip, port, reason=f"{spn}: frontend {ip}:{port} removed"))
        for node_port in old_nodeports - new_nodeports:
            filters.add(ConntrackFilter(udp, None, node_port, reason=f"{spn}: node port {node_port} removed"))
        old_eps = _serving_ips(old, spn) if before is not None else set()
        new_eps = _serving_ips(new, spn) if after is not None else set()
        if after is None:
            continue
        for ep in old_eps - new_eps:
            for ip, port in new_fronts:
                filters.add(ConntrackFilter(udp, ip, port, ep, reason=f"{spn}: endpoint {ep} removed"))
            for node_port in new_nodeports:
                filters.add(ConntrackFilter(udp, None, node_port, ep, reason=f"{spn}: endpoint {ep} removed"))
        if new_eps and not old_eps:
            for ip, port in new_fronts:
                filters.add(ConntrackFilter(udp, ip, port, reason=f"{spn}: newly active"))
            for node_port in new_nodeports:
                filters.add(ConntrackFilter(udp, None, node_port, reason=f"{spn}: newly active"))
    return sorted(filters, key=_sort_key)


def _sort_key(f: ConntrackFilter) -> tuple:
    return (f.orig_dst is None, int(f.orig_dst or 0), f.orig_port_dst or 0, int(f.dst_nat or 0))
