"""CNI for netk8s: the ``netk8s-cni`` plugin (bridge + host-local) and the runtime-side invoker.

``types`` holds the pure protocol values (config, results, errors), ``ipam``
the file-based host-local allocator, ``plugin`` the kernel side of the plugin,
``main`` the executable, and ``invoker`` what the kubelet uses to run any CNI
plugin chain in a node's namespace.
"""

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

__all__ = ["Attachment", "CniFailure", "CniInvoker", "load_conflist", "node_conflist", "CNI_VERSION",
           "PLUGIN_TYPE", "SUPPORTED_VERSIONS", "CNIError", "ErrorCode"]
