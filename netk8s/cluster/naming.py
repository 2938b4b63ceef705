"""Names of the kernel objects a cluster owns; every one starts with ``nk-<cluster>-``."""

from __future__ import annotations

from pathlib import Path

from netk8s.api import meta

# Set to "true" on a Node by `netk8s node stop`: its kubelet stops reporting, as if it had died.
KUBELET_STOPPED_ANNOTATION = "netk8s.io/kubelet-stopped"


def node_netns(cluster: str, name: str) -> str:
    """Namespace of an emulated node, external host or switch."""
    return f"nk-{cluster}-{name}"


def pod_netns(cluster: str, pod: dict) -> str:
    """Namespace of a pod: readable in `ip netns list`, unique across re-creations."""
    return f"nk-{cluster}-{meta.namespace_of(pod)}-{meta.name_of(pod)}-{meta.uid_of(pod)[:5]}"


def container_log_path(logs_dir: Path, pod: dict, container: str, restart: int) -> Path:
    """Where a container instance's stdout/stderr go, laid out like /var/log/pods on a node."""
    pod_dir = f"{meta.namespace_of(pod)}_{meta.name_of(pod)}_{meta.uid_of(pod)}"
    return logs_dir / pod_dir / container / f"{restart}.log"
