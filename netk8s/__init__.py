"""netk8s: a packet-level Kubernetes cluster emulator.

``from netk8s import Cluster`` is the Python API (see ``netk8s.cluster.api``).
Imports are lazy so that small entry points (the echo image, the CNI
executable, the pytest plugin) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from netk8s.cluster.api import Cluster

__all__ = ["Cluster", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Cluster":
        from netk8s.cluster.api import Cluster

        return Cluster
    raise AttributeError(f"module 'netk8s' has no attribute {name!r}")
