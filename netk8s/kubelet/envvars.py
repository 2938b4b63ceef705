"""A container's environment, built the way the kubelet builds it (pure).

Order and precedence follow pkg/kubelet ``makeEnvironmentVariables``: first
``envFrom`` (ConfigMaps and Secrets, with their ``prefix``), then ``env``
(``value`` with ``$(VAR)`` expansion, ``valueFrom`` fieldRef,
resourceFieldRef, configMapKeyRef, secretKeyRef), then the service link
variables of pkg/kubelet/envvars for names not set yet. Service links cover
every Service with a cluster IP in the pod's namespace when
``enableServiceLinks`` is not false, plus the ``kubernetes`` Service of the
``default`` namespace whenever it exists. ``$(VAR)`` references in
``command``/``args`` are expanded against the final environment; ``$$``
escapes a dollar.

Objects the environment refers to are fetched through a lookup callable, so
this module never talks to the API itself. Failures a kubelet reports as
``CreateContainerConfigError`` raise ``ContainerConfigError``.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from ipaddress import ip_address
from typing import Callable, Mapping

from netk8s.api import quantity
from netk8s.errors import NetK8sError, ValidationError

MASTER_SERVICE_NAMESPACE = "default"
MASTER_SERVICES = frozenset({"kubernetes"})


class ContainerConfigError(NetK8sError):
    """The container cannot be configured yet (a missing ConfigMap, Secret or key): ``CreateContainerConfigError``."""


class RefKind(str, Enum):
    CONFIGMAP = "ConfigMap"
    SECRET = "Secret"


# (kind, namespace, name) -> the object, or None when it does not exist.
ObjectLookup = Callable[[RefKind, str, str], "dict | None"]


@dataclass(frozen=True)
class PodRuntimeInfo:
    """What fieldRef and resourceFieldRef can read besides the pod object itself."""

    node_name: str
    pod_ips: tuple[str, ...]
    host_ips: tuple[str, ...]
    node_allocatable: Mapping[str, str] = field(default_factory=dict)


@dataclass
class EnvResult:
    env: dict[str, str]
    # Keys of envFrom sources skipped as invalid names: (kind, "ns/name", [keys]).
    invalid_keys: list[tuple[RefKind, str, list[str]]] = field(default_factory=list)


# -- $(VAR) expansion (third_party/forked/golang/expansion semantics) -----------------------------

def expand(text: str, *contexts: Mapping[str, str]) -> str:
    """Replace ``$(NAME)`` with its value from the first context that has it; unknown names stay
    as written, ``$$`` becomes ``$``, an unterminated ``$(`` stays literal."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1:]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    out.append(_lookup(name, contexts))
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def _lookup(name: str, contexts: tuple[Mapping[str, str], ...]) -> str:
    for context in contexts:
        if name in context:
            return context[name]
    return f"$({name})"


# -- service links ---------------------------------------------------------------------------------

def _env_name(name: str) -> str:
    return name.replace("-", "_").upper()


def _cluster_ip(service: dict) -> str:
    ip = str((service.get("spec") or {}).get("clusterIP") or "")
    return "" if ip == "None" else ip


def services_for_pod(services: list[dict], namespace: str, enable_service_links: bool) -> list[dict]:
    """The Services whose variables a pod gets (``getServiceEnvVarMap``), sorted by name."""
    chosen: dict[str, dict] = {}
    for svc in services:
        if not _cluster_ip(svc):
            continue
        md = svc.get("metadata") or {}
        name, svc_ns = str(md.get("name", "")), str(md.get("namespace") or "default")
        if svc_ns == MASTER_SERVICE_NAMESPACE and name in MASTER_SERVICES:
            chosen.setdefault(name, svc)
        elif svc_ns == namespace and enable_service_links:
            chosen[name] = svc
    return [chosen[n] for n in sorted(chosen)]


def service_env(services: list[dict]) -> dict[str, str]:
    """``<NAME>_SERVICE_HOST/_PORT[_<PORTNAME>]`` and the Docker-link ``<NAME>_PORT*`` variables."""
    env: dict[str, str] = {}
    for svc in services:
        ip = _cluster_ip(svc)
        ports = [p for p in (svc.get("spec") or {}).get("ports") or [] if isinstance(p, dict)]
        if not ip or not ports:
            continue
        prefix = _env_name(str((svc.get("metadata") or {}).get("name", "")))
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(int(ports[0].get("port", 0)))
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{_env_name(str(port['name']))}"] = str(int(port.get("port", 0)))
        host = f"[{ip}]" if ip_address(ip).version == 6 else ip
        for i, port in enumerate(ports):
            proto = str(port.get("protocol") or "TCP")
            number = int(port.get("port", 0))
            url = f"{proto.lower()}://{host}:{number}"
            if i == 0:
                env[f"{prefix}_PORT"] = url
            port_prefix = f"{prefix}_PORT_{number}_{proto.upper()}"
            env[port_prefix] = url
            env[f"{port_prefix}_PROTO"] = proto.lower()
            env[f"{port_prefix}_PORT"] = str(number)
            env[f"{port_prefix}_ADDR"] = ip
    return env


# -- downward API --------------------------------------------------------------------------------

def _subscripted(path: str, prefix: str) -> str | None:
    """``metadata.labels['app']`` -> ``app`` for the given prefix."""
    if not path.startswith(prefix + "[") or not path.endswith("]"):
        return None
    inner = path[len(prefix) + 1:-1]
    if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
        return inner[1:-1]
    return None


def field_value(pod: dict, info: PodRuntimeInfo, path: str, where: str) -> str:
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": md.get("name", ""), "metadata.namespace": md.get("namespace") or "default",
        "metadata.uid": md.get("uid", ""), "spec.nodeName": info.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": info.pod_ips[0] if info.pod_ips else "",
        "status.podIPs": ",".join(info.pod_ips),
        "status.hostIP": info.host_ips[0] if info.host_ips else "",
        "status.hostIPs": ",".join(info.host_ips),
    }
    if path in simple:
        return str(simple[path])
    for prefix, values in (("metadata.labels", md.get("labels") or {}),
                           ("metadata.annotations", md.get("annotations") or {})):
        key = _subscripted(path, prefix)
        if key is not None:
            return str(values.get(key, ""))
    raise ValidationError(where, f"unsupported fieldPath {path!r}")


def resource_value(container: dict, selector: dict, info: PodRuntimeInfo, where: str) -> str:
    """``resourceFieldRef``: limits fall back to the node's allocatable, requests to the limits; the
    value is divided by ``divisor`` (default 1) and rounded up."""
    resource = str(selector.get("resource", ""))
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise ValidationError(where, f"unsupported resource {resource!r}")
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if kind == "limits":
        raw = limits.get(name, info.node_allocatable.get(name, "0"))
    else:
        raw = requests.get(name, limits.get(name, "0"))
    value = quantity.parse(raw, where)
    divisor = quantity.parse(selector.get("divisor") or "1", where)
    if divisor == 0:
        divisor = Decimal(1)
    if name == "cpu":  # compared in millicores, as the kubelet does
        value, divisor = value * 1000, divisor * 1000
    return str(math.ceil(value / divisor))


# -- ConfigMaps and Secrets ----------------------------------------------------------------------

def _data_of(kind: RefKind, obj: dict) -> dict[str, str]:
    data = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
    if kind is RefKind.SECRET:
        decoded = {}
        for key, value in data.items():
            try:
                decoded[key] = base64.b64decode(value, validate=True).decode(errors="replace")
            except (binascii.Error, ValueError):
                decoded[key] = value
        decoded.update({str(k): str(v) for k, v in (obj.get("stringData") or {}).items()})
        return decoded
    return data


def _fetch(lookup: ObjectLookup, kind: RefKind, namespace: str, name: str, optional: bool) -> dict | None:
    obj = lookup(kind, namespace, name)
    if obj is None and not optional:
        raise ContainerConfigError(f'{kind.value.lower()} "{name}" not found')
    return obj


def valid_env_name(name: str) -> bool:
    """Relaxed environment variable names (Kubernetes 1.32 default): printable ASCII without '='."""
    return bool(name) and all(32 <= ord(c) <= 126 for c in name) and "=" not in name


def container_env(pod: dict, container: dict, info: PodRuntimeInfo, lookup: ObjectLookup,
                  services: list[dict], base: Mapping[str, str] | None = None) -> EnvResult:
    """The container's environment: ``base`` (runtime variables such as HOSTNAME), envFrom, env,
    then service links for names still unset."""
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    enable_links = (pod.get("spec") or {}).get("enableServiceLinks", True) is not False
    svc_env = service_env(services_for_pod(services, namespace, enable_links))
    env: dict[str, str] = {}
    result = EnvResult(env)
    cname = container.get("name", "")
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        for kind, ref_key in ((RefKind.CONFIGMAP, "configMapRef"), (RefKind.SECRET, "secretRef")):
            ref = source.get(ref_key)
            if not isinstance(ref, dict):
                continue
            obj = _fetch(lookup, kind, namespace, str(ref.get("name", "")), bool(ref.get("optional")))
            if obj is None:
                continue
            invalid = []
            for key, value in _data_of(kind, obj).items():
                name = prefix + key
                if not valid_env_name(name):
                    invalid.append(name)
                    continue
                env[name] = value
            if invalid:
                result.invalid_keys.append((kind, f"{namespace}/{ref.get('name', '')}", sorted(invalid)))
    for i, item in enumerate(container.get("env") or []):
        name = str(item.get("name") or "")
        if not name:
            continue
        where = f"spec.containers[{cname}].env[{i}]"
        if "valueFrom" not in item or item.get("value"):
            env[name] = expand(str(item.get("value") or ""), env, svc_env)
            continue
        source = item.get("valueFrom") or {}
        value = _value_from(pod, container, source, info, lookup, namespace, where)
        if value is not None:
            env[name] = value
    for key, value in svc_env.items():
        env.setdefault(key, value)
    if base:
        result.env = {**{k: v for k, v in base.items() if k not in env}, **env}
    return result


def _value_from(pod: dict, container: dict, source: dict, info: PodRuntimeInfo, lookup: ObjectLookup,
                namespace: str, where: str) -> str | None:
    if isinstance(source.get("fieldRef"), dict):
        return field_value(pod, info, str(source["fieldRef"].get("fieldPath", "")), where)
    if isinstance(source.get("resourceFieldRef"), dict):
        selector = source["resourceFieldRef"]
        target = container
        if selector.get("containerName"):
            for c in (pod.get("spec") or {}).get("containers") or []:
                if c.get("name") == selector["containerName"]:
                    target = c
        return resource_value(target, selector, info, where)
    for kind, ref_key in ((RefKind.CONFIGMAP, "configMapKeyRef"), (RefKind.SECRET, "secretKeyRef")):
        ref = source.get(ref_key)
        if not isinstance(ref, dict):
            continue
        optional = bool(ref.get("optional"))
        name, key = str(ref.get("name", "")), str(ref.get("key", ""))
        obj = _fetch(lookup, kind, namespace, name, optional)
        if obj is None:
            return None
        data = _data_of(kind, obj)
        if key not in data:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in {kind.value} {namespace}/{name}")
        return data[key]
    raise ValidationError(where, "valueFrom: one of fieldRef, resourceFieldRef, configMapKeyRef or secretKeyRef "
                                 "is required")


def expand_command(container: dict, env: Mapping[str, str]) -> dict:
    """A copy of the container spec with ``$(VAR)`` expanded in ``command`` and ``args``."""
    out = dict(container)
    for key in ("command", "args"):
        if isinstance(container.get(key), list):
            out[key] = [expand(str(v), env) for v in container[key]]
    return out
