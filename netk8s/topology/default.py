"""The built-in default cluster: what ``netk8s up`` brings up without a topology file.

Like kind's default plus two workers: a tainted control-plane node, ``worker`` and
``worker2``, and one external host ``client``, all on the implicit switch ``s1``
(172.18.0.0/16, gateway .1 reserved), addressed .2-.5 in that order. It is the
smallest topology document, run through the loader like any file, so it gets the
same defaults and wiring; ``topologies/default.yaml`` spells the same cluster out
for users and the unit tests check that the two stay identical.
"""

from __future__ import annotations

from netk8s.topology.loader import load_dict
from netk8s.topology.schema import API_VERSION, KIND, Topology

_DEFAULT_DOCUMENT = {
    "apiVersion": API_VERSION,
    "kind": KIND,
    "nodes": [{"name": "control-plane", "role": "control-plane"}, {"name": "worker"}, {"name": "worker2"}],
    "hosts": [{"name": "client"}],
}


def default_topology(name: str | None = None) -> Topology:
    """The default cluster, optionally under another (validated) cluster name."""
    topology = load_dict(_DEFAULT_DOCUMENT)
    return topology if name is None else topology.with_name(name)
