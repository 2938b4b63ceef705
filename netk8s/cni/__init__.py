"""CNI for netk8s: the ``netk8s-cni`` plugin (bridge + host-local) and the runtime-side invoker.

``types`` holds the pure protocol values (config, results, errors), ``ipam``
the file-based host-local allocator, ``rtnl`` the small rtnetlink client,
``plugin`` the kernel side of the plugin, ``main`` the executable, and
``invoker`` what the kubelet uses to run any CNI plugin chain in a node's
namespace.

The names below are loaded on first use: the ``netk8s-cni`` executable imports
``netk8s.cni.main`` on every call and must not pay for the invoker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netk8s.cni.invoker import (
        Attachment,
        CniFailure,
        CniInvoker,
        load_conflist,
        node_conflist,
    )
    from netk8s.cni.types import (
        CNI_VERSION,
        PLUGIN_TYPE,
        SUPPORTED_VERSIONS,
        CNIError,
        ErrorCode,
    )

_EXPORTS = {
    "Attachment": "netk8s.cni.invoker",
    "CniFailure": "netk8s.cni.invoker",
    "CniInvoker": "netk8s.cni.invoker",
    "load_conflist": "netk8s.cni.invoker",
    "node_conflist": "netk8s.cni.invoker",
    "CNI_VERSION": "netk8s.cni.types",
    "PLUGIN_TYPE": "netk8s.cni.types",
    "SUPPORTED_VERSIONS": "netk8s.cni.types",
    "CNIError": "netk8s.cni.types",
    "ErrorCode": "netk8s.cni.types",
}

__all__ = ["Attachment", "CniFailure", "CniInvoker", "load_conflist", "node_conflist", "CNI_VERSION", "PLUGIN_TYPE",
           "SUPPORTED_VERSIONS", "CNIError", "ErrorCode"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netk8s.cni' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
