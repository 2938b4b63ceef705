"""Topology: the schema, loader and built-in default of a netk8s cluster description.

``load_file``/``load_text``/``load_dict`` turn the ``netk8s.io/v1alpha1`` ``Cluster``
YAML into a validated, fully addressed ``Topology``; ``to_dict`` goes back;
``default_topology`` is the cluster ``netk8s up`` builds without a file.
"""

from netk8s.topology.default import default_topology
from netk8s.topology.loader import load_dict, load_file, load_text, to_dict
from netk8s.topology.schema import (
    API_VERSION,
    CONTROL_PLANE_TAINT,
    DEFAULT_CLUSTER_NAME,
    KIND,
    CniPlugin,
    ControlPlaneSpec,
    Endpoint,
    HostSpec,
    LinkSpec,
    NetworkingMode,
    NodeRole,
    NodeSpec,
    ProxyMode,
    RouterSpec,
    StoreKind,
    SwitchSpec,
    Taint,
    TaintEffect,
    Topology,
)

__all__ = [
    "API_VERSION",
    "CONTROL_PLANE_TAINT",
    "CniPlugin",
    "ControlPlaneSpec",
    "DEFAULT_CLUSTER_NAME",
    "KIND",
    "Endpoint",
    "HostSpec",
    "LinkSpec",
    "NetworkingMode",
    "NodeRole",
    "NodeSpec",
    "ProxyMode",
    "RouterSpec",
    "StoreKind",
    "SwitchSpec",
    "Taint",
    "TaintEffect",
    "Topology",
    "default_topology",
    "load_dict",
    "load_file",
    "load_text",
    "to_dict",
]
