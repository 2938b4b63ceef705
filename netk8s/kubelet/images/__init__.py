"""Built-in image catalogue: turns a container spec into the argv the kubelet runs.

netk8s runs no container runtime; a container is a host process started in the
pod's network namespace. An image listed in the catalogue (``netk8s/echo``)
maps to a Python module shipped here; any container that sets ``command`` runs
that host command with its ``args``. Adding an image means adding one entry to
``_CATALOGUE``.

This package is imported when ``python -m netk8s.kubelet.images.<image>``
starts a pod process, so it imports only the stdlib and ``netk8s.errors``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from netk8s.errors import NetK8sError

# Registries whose prefix is ignored when matching a catalogue name.
_REGISTRY_PREFIXES = ("docker.io/", "registry.k8s.io/")

# The port the echo server listens on when the container declares no TCP port.
ECHO_DEFAULT_PORT = 8080


@dataclass(frozen=True)
class PodContext:
    """What a built-in image needs to know about the pod it runs in."""

    pod_name: str
    namespace: str
    node_name: str
    pod_ip: str


class ImageNotFound(NetK8sError):
    """The image is not built in and the container gives no command to run instead."""

    def __init__(self, image: str) -> None:
        self.image = image
        super().__init__(
            f'image "{image}" is not a netk8s built-in image and the container has no command; '
            f"built-in images: {', '.join(builtin_images())}")


def image_repository(image: str) -> str:
    """``registry.k8s.io/netk8s/echo:1.0@sha256:..`` -> ``netk8s/echo`` (tag, digest, known registry dropped)."""
    name = image.strip()
    name = name.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a colon before the last slash is a registry port, not a tag
        name = name[:colon]
    for prefix in _REGISTRY_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(v) for v in value]


def tcp_container_ports(container: dict) -> list[int]:
    """The container's TCP containerPorts, in declaration order (protocol defaults to TCP)."""
    ports: list[int] = []
    for port in container.get("ports") or []:
        if not isinstance(port, dict):
            continue
        if (port.get("protocol") or "TCP") != "TCP" or port.get("containerPort") is None:
            continue
        number = int(port["containerPort"])
        if number not in ports:
            ports.append(number)
    return ports


def _echo_argv(container: dict, ctx: PodContext, python: str) -> list[str]:
    argv = [python, "-m", "netk8s.kubelet.images.echo",
            "--pod", ctx.pod_name, "--namespace", ctx.namespace,
            "--node", ctx.node_name, "--pod-ip", ctx.pod_ip]
    for port in tcp_container_ports(container) or [ECHO_DEFAULT_PORT]:
        argv += ["--port", str(port)]
    return argv


@dataclass(frozen=True)
class BuiltinImage:
    """One catalogue entry: its repository name, a one-line summary, and its argv builder."""

    name: str
    summary: str
    argv: Callable[[dict, PodContext, str], list[str]]


_CATALOGUE: dict[str, BuiltinImage] = {
    image.name: image
    for image in (
        BuiltinImage("netk8s/echo",
                     "HTTP echo server on each TCP containerPort (8080 when none): GET / answers JSON "
                     "naming the pod, namespace, node, podIP and the client's ip:port; /healthz answers ok",
                     _echo_argv),
    )
}


def builtin_images() -> list[str]:
    """Names of the built-in images, sorted."""
    return sorted(_CATALOGUE)


def describe_builtin_images() -> dict[str, str]:
    """Built-in image name -> one-line summary (for docs and ``--help``)."""
    return {name: _CATALOGUE[name].summary for name in builtin_images()}


def command_for(container: dict, ctx: PodContext, python: str = sys.executable) -> list[str]:
    """The argv the kubelet runs (in the pod's namespace) for one container spec.

    ``command`` set: ``command + args`` (a host program). Otherwise the image must be
    built in: its argv plus ``args``. Raises ``ImageNotFound`` for anything else.
    """
    command = _str_list(container.get("command"))
    args = _str_list(container.get("args"))
    if command:
        return command + args
    image = str(container.get("image") or "")
    entry = _CATALOGUE.get(image_repository(image))
    if entry is None:
        raise ImageNotFound(image)
    return entry.argv(container, ctx, python) + args
