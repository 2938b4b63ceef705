"""Built-in image catalogue: turns a container spec into the argv the kubelet runs.

netk8s runs no container runtime and pulls no images; a container is a host
process started in the pod's network namespace. Each catalogue entry stands in
for a real image: its ENTRYPOINT and CMD (so ``command``/``args`` combine as
they do in Kubernetes: ``command`` replaces the entrypoint and drops CMD,
``args`` replaces CMD), and the programs inside it that netk8s provides as
Python modules here (``python -m netk8s.kubelet.images.<module>``). A resolved
argv whose program is one of those runs the module; any other program is run
from the host (so ``sh -c ...``, ``sleep``, ``wget`` work in every image). An
image outside the catalogue runs only when the container sets ``command``.
docs/images.md documents the catalogue; keep the two in step.

This package is imported when ``python -m netk8s.kubelet.images.<image>``
starts a pod process, so it imports only the stdlib and ``netk8s.errors``.
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping

from netk8s.errors import NetK8sError

# Registries whose prefix is ignored when matching a catalogue name (Docker Hub's official
# images also drop their "library/" namespace).
_REGISTRY_PREFIXES = ("docker.io/", "index.docker.io/", "registry-1.docker.io/", "registry.k8s.io/", "k8s.gcr.io/")
_DOCKER_LIBRARY = "library/"

# The port the echo server listens on when the container declares no TCP port.
ECHO_DEFAULT_PORT = 8080
# The port the nginx stand-in listens on when the container declares no TCP port.
NGINX_DEFAULT_PORT = 80
# The nginx version the stand-in reports when the image tag names none.
NGINX_DEFAULT_VERSION = "1.27.4"
# The agnhost subcommands netk8s provides (the module checks the same tuple).
AGNHOST_SUBCOMMANDS = ("netexec", "pause", "porter", "serve-hostname")


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


class ImageCommandNotSupported(ImageNotFound):
    """A built-in image was asked to run one of its programs in a way netk8s does not provide."""

    def __init__(self, image: str, detail: str) -> None:
        self.image = image
        self.detail = detail
        NetK8sError.__init__(self, f'image "{image}": {detail}')


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
    if name.startswith(_DOCKER_LIBRARY):
        name = name[len(_DOCKER_LIBRARY):]
    return name


def image_tag(image: str) -> str:
    """``nginx:1.25-alpine@sha256:..`` -> ``1.25-alpine``; ``latest`` when the reference has no tag."""
    name = image.strip().split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[colon + 1:] if colon > slash else "latest"


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


@dataclass(frozen=True)
class Launch:
    """One container start: the image reference as written, the container spec, the pod, the interpreter
    and the machine's hostname (as the kubelet sees it)."""

    image: str
    container: dict
    ctx: PodContext
    python: str
    machine_hostname: str = ""

    def module(self, name: str) -> list[str]:
        return [self.python, "-m", f"netk8s.kubelet.images.{name}"]


# A program inside a built-in image: gets the resolved argv (program first) and returns the argv to run.
Program = Callable[[Launch, list[str]], list[str]]


def _program_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _echo(launch: Launch, argv: list[str]) -> list[str]:
    ctx = launch.ctx
    command = launch.module("echo") + ["--pod", ctx.pod_name, "--namespace", ctx.namespace,
                                       "--node", ctx.node_name, "--pod-ip", ctx.pod_ip]
    for port in tcp_container_ports(launch.container) or [ECHO_DEFAULT_PORT]:
        command += ["--port", str(port)]
    return command + argv[1:]


def _agnhost(launch: Launch, argv: list[str]) -> list[str]:
    subcommand = argv[1] if len(argv) > 1 else ""
    if subcommand and subcommand not in AGNHOST_SUBCOMMANDS:
        raise ImageCommandNotSupported(
            launch.image, f'agnhost subcommand "{subcommand}" is not built into netk8s; '
                          f"supported: {', '.join(AGNHOST_SUBCOMMANDS)}")
    return launch.module("agnhost") + ["--netk8s-pod", launch.ctx.pod_name,
                                       "--netk8s-machine-hostname", launch.machine_hostname] + argv[1:]


def _pause(launch: Launch, argv: list[str]) -> list[str]:
    return launch.module("pause") + argv[1:]


def nginx_version(image: str) -> str:
    """The version a tag names (``1.25.3``, ``1.25-alpine`` -> ``1.25``), else the default."""
    match = re.match(r"\d+(\.\d+)*", image_tag(image))
    return match.group(0) if match else NGINX_DEFAULT_VERSION


def _nginx(launch: Launch, argv: list[str]) -> list[str]:
    command = launch.module("nginx")
    for port in tcp_container_ports(launch.container) or [NGINX_DEFAULT_PORT]:
        command += ["--port", str(port)]
    return command + ["--server-version", nginx_version(launch.image), "--"] + argv[1:]


def _nginx_entrypoint(launch: Launch, argv: list[str]) -> list[str]:
    # The official image's /docker-entrypoint.sh configures nginx when $1 is nginx or nginx-debug,
    # then execs "$@" whatever it is (with nothing to exec it just ends).
    rest = argv[1:]
    if not rest:
        return ["true"]
    if _program_name(rest[0]) in ("nginx", "nginx-debug"):
        return _nginx(launch, rest)
    return rest


def _shell(launch: Launch, argv: list[str]) -> list[str]:
    # A bare shell reads commands from stdin. Containers get /dev/null, so it ends at once (busybox's
    # default CMD completes); with `stdin: true` a real runtime leaves stdin open and the shell waits.
    if len(argv) == 1 and launch.container.get("stdin"):
        return launch.module("pause")
    return argv


@dataclass(frozen=True)
class BuiltinImage:
    """One catalogue entry: the image it stands in for, its ENTRYPOINT/CMD and the programs netk8s provides."""

    name: str  # the reference users write, without a tag
    summary: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    programs: Mapping[str, Program] = field(default_factory=dict, compare=False, hash=False)
    aliases: tuple[str, ...] = ()

    def repositories(self) -> tuple[str, ...]:
        return (image_repository(self.name), *(image_repository(alias) for alias in self.aliases))

    def argv(self, command: list[str], args: list[str]) -> list[str]:
        """Kubernetes' rule: command replaces ENTRYPOINT (and drops CMD); args replaces CMD."""
        if command:
            return command + args
        return list(self.entrypoint) + (args if args else list(self.cmd))


_SHELL_PROGRAMS: dict[str, Program] = {"sh": _shell, "ash": _shell, "bash": _shell}

_IMAGES: tuple[BuiltinImage, ...] = (
    BuiltinImage("netk8s/echo",
                 "HTTP echo server on each TCP containerPort (8080 when none): GET / answers JSON "
                 "naming the pod, namespace, node, podIP and the client's ip:port; /healthz answers ok",
                 entrypoint=("/netk8s-echo",), programs={"netk8s-echo": _echo}),
    BuiltinImage("registry.k8s.io/e2e-test-images/agnhost",
                 "Kubernetes' e2e test server: netexec (HTTP 8080 with /hostname, /echo, /clientip, /dial, "
                 "/shell, /exit, /healthz ...; UDP 8081), serve-hostname (9376), porter, pause (the default)",
                 entrypoint=("/agnhost",), cmd=("pause",),
                 programs={"agnhost": _agnhost, "agnhost-2": _agnhost},
                 aliases=("k8s.gcr.io/e2e-test-images/agnhost", "gcr.io/kubernetes-e2e-test-images/agnhost")),
    BuiltinImage("registry.k8s.io/pause",
                 "sleeps until SIGTERM or SIGINT, then exits 0",
                 entrypoint=("/pause",), programs={"pause": _pause}),
    BuiltinImage("registry.k8s.io/coredns/coredns",
                 "the cluster DNS pods' container: sleeps like pause; the cluster daemon answers DNS on port 53 "
                 "in the pod's network namespace",
                 entrypoint=("/coredns",), programs={"coredns": _pause}),
    BuiltinImage("nginx",
                 "nginx stand-in: the \"Welcome to nginx!\" page on each TCP containerPort (80 when none), "
                 "access log on stdout in nginx's format",
                 entrypoint=("/docker-entrypoint.sh",), cmd=("nginx", "-g", "daemon off;"),
                 programs={"docker-entrypoint.sh": _nginx_entrypoint, "nginx": _nginx, "nginx-debug": _nginx}),
    BuiltinImage("busybox", "runs its command from the host; default CMD sh, which ends at once without stdin",
                 cmd=("sh",), programs=_SHELL_PROGRAMS),
    BuiltinImage("alpine", "runs its command from the host; default CMD /bin/sh, which ends at once without stdin",
                 cmd=("/bin/sh",), programs=_SHELL_PROGRAMS),
    BuiltinImage("debian", "runs its command from the host; default CMD bash, which ends at once without stdin",
                 cmd=("bash",), programs=_SHELL_PROGRAMS),
    BuiltinImage("ubuntu", "runs its command from the host; default CMD bash, which ends at once without stdin",
                 cmd=("bash",), programs=_SHELL_PROGRAMS),
)

_CATALOGUE: dict[str, BuiltinImage] = {repo: image for image in _IMAGES for repo in image.repositories()}


def resolve_image(image: str) -> BuiltinImage | None:
    """The catalogue entry an image reference (any tag, digest or known registry) stands for."""
    return _CATALOGUE.get(image_repository(image))


def builtin_images() -> list[str]:
    """Names of the built-in images, sorted."""
    return sorted(image.name for image in _IMAGES)


def describe_builtin_images() -> dict[str, str]:
    """Built-in image name -> one-line summary (for docs and ``--help``)."""
    summaries = {image.name: image.summary for image in _IMAGES}
    return {name: summaries[name] for name in builtin_images()}


def command_for(container: dict, ctx: PodContext, python: str = sys.executable) -> list[str]:
    """The argv the kubelet runs (in the pod's namespace) for one container spec.

    A built-in image: its ENTRYPOINT/CMD combined with ``command``/``args``; a program
    netk8s provides for that image runs as its Python module, any other from the host.
    Another image: ``command + args`` when ``command`` is set. Raises ``ImageNotFound``
    otherwise, and ``ImageCommandNotSupported`` (a subclass) for a built-in program
    asked for something netk8s does not provide (an unknown agnhost subcommand).
    """
    command = _str_list(container.get("command"))
    args = _str_list(container.get("args"))
    image = str(container.get("image") or "")
    entry = resolve_image(image)
    if entry is None:
        if command:
            return command + args
        raise ImageNotFound(image)
    argv = entry.argv(command, args)
    if not argv:
        raise ImageNotFound(image)
    program = entry.programs.get(_program_name(argv[0]))
    if program is None:
        return argv
    # The kubelet runs in the machine's UTS namespace: its hostname tells a pod process whether it has its own.
    return program(Launch(image, container, ctx, python, socket.gethostname()), argv)
