"""The built-in default cluster: what ``netk8s up`` brings up without a topology file.

Like kind's default plus two workers: a tainted control-plane node, ``worker`` and
``worker2``, and one external host ``client``, all on switch ``s1`` (172.18.0.0/16,
gateway .1 reserved), addressed .2-.5 in that order. Built directly from the schema
dataclasses; ``topologies/default.yaml`` describes the same cluster for users and the
unit tests check that the two stay identical.
"""

from __future__ import annotations

import ipaddress

from netk8s.topology.schema import (
    CONTROL_PLANE_TAINT,
    DEFAULT_CLUSTER_NAME,
    DEFAULT_NODE_PORT_RANGE,
    DEFAULT_POD_SUBNET,
    DEFAULT_SERVICE_SUBNET,
    DEFAULT_SWITCH_NAME,
    DEFAULT_UNDERLAY_SUBNET,
    Endpoint,
    HostSpec,
    LinkSpec,
    NetworkingMode,
    NodeRole,
    NodeSpec,
    ProxyMode,
    StoreKind,
    SwitchSpec,
    Topology,
    default_capacity,
)


def default_topology(name: str | None = None) -> Topology:
    """The default cluster, optionally under another (validated) cluster name."""
    nodes = (
        NodeSpec("control-plane", NodeRole.CONTROL_PLANE, {}, (CONTROL_PLANE_TAINT,), default_capacity()),
        NodeSpec("worker", NodeRole.WORKER, {}, (), default_capacity()),
        NodeSpec("worker2", NodeRole.WORKER, {}, (), default_capacity()),
    )
    hosts = (HostSpec("client"),)
    switch = SwitchSpec(DEFAULT_SWITCH_NAME, DEFAULT_UNDERLAY_SUBNET)
    members = [n.name for n in nodes] + [h.name for h in hosts]
    links = tuple(
        LinkSpec(
            a=Endpoint(member, "eth0", ipaddress.IPv4Interface(
                (DEFAULT_UNDERLAY_SUBNET.network_address + 2 + i, DEFAULT_UNDERLAY_SUBNET.prefixlen))),
            b=Endpoint(switch.name, f"{switch.name}-p{i + 1}", None),
            bandwidth_mbit=None,
            switch=switch.name,
        )
        for i, member in enumerate(members)
    )
    topology = Topology(
        name=DEFAULT_CLUSTER_NAME,
        pod_subnet=DEFAULT_POD_SUBNET,
        service_subnet=DEFAULT_SERVICE_SUBNET,
        node_port_range=DEFAULT_NODE_PORT_RANGE,
        networking_mode=NetworkingMode.HOST_GW,
        proxy_mode=ProxyMode.IPTABLES,
        store=StoreKind.SQLITE,
        nodes=nodes,
        hosts=hosts,
        switches=(switch,),
        routers=(),
        links=links,
        manifests=(),
        source=None,
    )
    return topology if name is None else topology.with_name(name)
