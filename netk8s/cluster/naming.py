"""Names of the kernel objects a cluster owns; every one starts with ``nk-<cluster>-``."""

from __future__ import annotations

from netk8s.api import meta


def node_netns(cluster: str, name: str) -> str:
    """Namespace of an emulated node, external host or switch."""
    return f"nk-{cluster}-{name}"


def pod_netns(cluster: str, pod: dict) -> str:
    """Namespace of a pod: readable in `ip netns list`, unique across re-creations."""
    return f"nk-{cluster}-{meta.namespace_of(pod)}-{meta.name_of(pod)}-{meta.uid_of(pod)[:5]}"
