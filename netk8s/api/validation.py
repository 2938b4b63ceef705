"""Validation of API objects with Kubernetes' field paths and wording.

Each ``validate_<kind>`` returns a list of ``FieldError``; the API server turns a
non-empty list into a 422 ``Invalid`` Status whose message and causes read as
kube-apiserver's do (``spec.ports[0].port: Invalid value: 0: must be between
1 and 65535, inclusive``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from netk8s.api.selectors import LabelSelector
from netk8s.errors import ValidationError

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + r")*"
DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"

_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                  "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
                  f"regex used for validation is '{DNS1123_SUBDOMAIN}')")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
              "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
              f"regex used for validation is '{DNS1123_LABEL}')")
_DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
                "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
                f"'abc-123', regex used for validation is '{DNS1035_LABEL}')")


class ErrorType(str, Enum):
    INVALID = "FieldValueInvalid"
    REQUIRED = "FieldValueRequired"
    NOT_SUPPORTED = "FieldValueNotSupported"
    DUPLICATE = "FieldValueDuplicate"
    FORBIDDEN = "FieldValueForbidden"


_TYPE_TEXT = {
    ErrorType.INVALID: "Invalid value",
    ErrorType.REQUIRED: "Required value",
    ErrorType.NOT_SUPPORTED: "Unsupported value",
    ErrorType.DUPLICATE: "Duplicate value",
    ErrorType.FORBIDDEN: "Forbidden",
}


@dataclass(frozen=True)
class FieldError:
    path: str
    type: ErrorType
    value: Any = None
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {_TYPE_TEXT[self.type]}"
        if self.type in (ErrorType.INVALID, ErrorType.NOT_SUPPORTED, ErrorType.DUPLICATE):
            text += f": {_render_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, default=str)


def aggregate_message(kind: str, name: str, errors: list[FieldError]) -> str:
    body = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    return f'{kind} "{name}" is invalid: {body}'


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and re.fullmatch(DNS1123_SUBDOMAIN, value) is not None


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and re.fullmatch(DNS1123_LABEL, value) is not None


def is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and re.fullmatch(DNS1035_LABEL, value) is not None


def name_error(path: str, value: str, rule: str = "subdomain") -> FieldError | None:
    if rule == "dns1035":
        if not is_dns1035_label(value):
            detail = "must be no more than 63 characters" if len(value) > 63 else _DNS1035_MSG
            return FieldError(path, ErrorType.INVALID, value, detail)
        return None
    if rule == "label":
        if not is_dns1123_label(value):
            detail = "must be no more than 63 characters" if len(value) > 63 else _LABEL_MSG
            return FieldError(path, ErrorType.INVALID, value, detail)
        return None
    if not is_dns1123_subdomain(value):
        detail = "must be no more than 253 characters" if len(value) > 253 else _SUBDOMAIN_MSG
        return FieldError(path, ErrorType.INVALID, value, detail)
    return None


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not is_dns1123_subdomain(prefix):
        return False
    return 0 < len(name) <= 63 and re.fullmatch(_QUALIFIED_NAME, name) is not None


def validate_labels(labels: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if labels is None:
        return errors
    if not isinstance(labels, dict):
        return [FieldError(path, ErrorType.INVALID, labels, "must be a map of string keys to string values")]
    for key, value in labels.items():
        if not _label_key_ok(str(key)):
            errors.append(FieldError(path, ErrorType.INVALID, key,
                                     "name part must consist of alphanumeric characters, '-', '_' or '.', "
                                     "and must start and end with an alphanumeric character"))
        if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(_LABEL_VALUE, value):
            errors.append(FieldError(f"{path}.{key}" if path.endswith("labels") else path,
                                     ErrorType.INVALID, value,
                                     "a valid label must be an empty string or consist of alphanumeric "
                                     "characters, '-', '_' or '.', and must start and end with an "
                                     "alphanumeric character"))
    return errors


def validate_metadata(obj: dict, namespaced: bool, name_rule: str = "subdomain") -> list[FieldError]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [FieldError("metadata", ErrorType.REQUIRED)]
    errors: list[FieldError] = []
    name = meta.get("name")
    if not name:
        errors.append(FieldError("metadata.name", ErrorType.REQUIRED, detail="name or generateName is required"))
    elif not isinstance(name, str):
        errors.append(FieldError("metadata.name", ErrorType.INVALID, name, "must be a string"))
    else:
        err = name_error("metadata.name", name, name_rule)
        if err:
            errors.append(err)
    if namespaced:
        ns = meta.get("namespace")
        if ns and (not isinstance(ns, str) or not is_dns1123_label(ns)):
            errors.append(FieldError("metadata.namespace", ErrorType.INVALID, ns, _LABEL_MSG))
    errors += validate_labels(meta.get("labels"), "metadata.labels")
    annotations = meta.get("annotations")
    if annotations is not None and not (isinstance(annotations, dict)
                                        and all(isinstance(v, str) for v in annotations.values())):
        errors.append(FieldError("metadata.annotations", ErrorType.INVALID, annotations,
                                 "must be a map of string keys to string values"))
    return errors


def _port_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


_PROTOCOLS = ("TCP", "UDP", "SCTP")


def _port_range_error(path: str, value: Any) -> FieldError:
    return FieldError(path, ErrorType.INVALID, value, "must be between 1 and 65535, inclusive")


def _protocol_error(path: str, protocol: Any) -> FieldError | None:
    if protocol in _PROTOCOLS:
        return None
    return FieldError(path, ErrorType.NOT_SUPPORTED, protocol, 'supported values: "SCTP", "TCP", "UDP"')


def validate_pod_spec(spec: Any, path: str) -> list[FieldError]:
    if not isinstance(spec, dict):
        return [FieldError(path, ErrorType.REQUIRED)]
    errors: list[FieldError] = []
    containers = spec.get("containers")
    if not containers:
        return [FieldError(f"{path}.containers", ErrorType.REQUIRED)]
    if not isinstance(containers, list):
        return [FieldError(f"{path}.containers", ErrorType.INVALID, containers, "must be a list")]
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            cpath = f"{path}.{group}[{i}]"
            if not isinstance(c, dict):
                errors.append(FieldError(cpath, ErrorType.INVALID, c, "must be an object"))
                continue
            name = c.get("name")
            if not name:
                errors.append(FieldError(f"{cpath}.name", ErrorType.REQUIRED))
            else:
                err = name_error(f"{cpath}.name", str(name), "label")
                if err:
                    errors.append(err)
                elif name in names:
                    errors.append(FieldError(f"{cpath}.name", ErrorType.DUPLICATE, name))
                names.add(str(name))
            if not c.get("image"):
                errors.append(FieldError(f"{cpath}.image", ErrorType.REQUIRED))
            for key in ("command", "args"):
                value = c.get(key)
                if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    errors.append(FieldError(f"{cpath}.{key}", ErrorType.INVALID, value, "must be a list of strings"))
            port_names: set[str] = set()
            for j, port in enumerate(c.get("ports") or []):
                ppath = f"{cpath}.ports[{j}]"
                if not _port_ok(port.get("containerPort")):
                    errors.append(_port_range_error(f"{ppath}.containerPort", port.get("containerPort")))
                proto = port.get("protocol", "TCP")
                if bad_protocol := _protocol_error(f"{ppath}.protocol", proto):
                    errors.append(bad_protocol)
                pname = port.get("name")
                if pname:
                    if pname in port_names:
                        errors.append(FieldError(f"{ppath}.name", ErrorType.DUPLICATE, pname))
                    port_names.add(pname)
            for j, env in enumerate(c.get("env") or []):
                if not isinstance(env, dict) or not env.get("name"):
                    errors.append(FieldError(f"{cpath}.env[{j}].name", ErrorType.REQUIRED))
    restart = spec.get("restartPolicy", "Always")
    if restart not in ("Always", "OnFailure", "Never"):
        errors.append(FieldError(f"{path}.restartPolicy", ErrorType.NOT_SUPPORTED, restart,
                                 'supported values: "Always", "OnFailure", "Never"'))
    return errors


def validate_pod(obj: dict) -> list[FieldError]:
    return validate_metadata(obj, True) + validate_pod_spec(obj.get("spec"), "spec")


def _selector_errors(selector: Any, template_labels: dict, path: str) -> list[FieldError]:
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return [FieldError(f"{path}.selector", ErrorType.REQUIRED)]
    try:
        parsed = LabelSelector.from_dict(selector, f"{path}.selector")
    except ValidationError as exc:
        return [FieldError(exc.path, ErrorType.INVALID, selector, exc.detail)]
    if not parsed.matches(template_labels):
        return [FieldError(f"{path}.template.metadata.labels", ErrorType.INVALID, template_labels,
                           "`selector` does not match template `labels`")]
    return []


def _validate_replicated(obj: dict) -> list[FieldError]:
    errors = validate_metadata(obj, True)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return errors + [FieldError("spec", ErrorType.REQUIRED)]
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        errors.append(FieldError("spec.replicas", ErrorType.INVALID, replicas,
                                 "must be greater than or equal to 0"))
    template = spec.get("template")
    if not isinstance(template, dict):
        return errors + [FieldError("spec.template", ErrorType.REQUIRED)]
    tlabels = (template.get("metadata") or {}).get("labels") or {}
    errors += validate_labels(tlabels, "spec.template.metadata.labels")
    errors += _selector_errors(spec.get("selector"), tlabels, "spec")
    errors += validate_pod_spec(template.get("spec"), "spec.template.spec")
    return errors


def _int_or_percent(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    return isinstance(value, str) and re.fullmatch(r"\d+%", value) is not None


def validate_deployment(obj: dict) -> list[FieldError]:
    errors = _validate_replicated(obj)
    strategy_spec = (obj.get("spec") or {}).get("strategy") or {}
    strategy = strategy_spec.get("type", "RollingUpdate")
    if strategy not in ("RollingUpdate", "Recreate"):
        errors.append(FieldError("spec.strategy.type", ErrorType.NOT_SUPPORTED, strategy,
                                 'supported values: "Recreate", "RollingUpdate"'))
    rolling = strategy_spec.get("rollingUpdate")
    if strategy == "Recreate" and rolling:
        errors.append(FieldError("spec.strategy.rollingUpdate", ErrorType.FORBIDDEN,
                                 detail="may not be specified when strategy `type` is 'Recreate'"))
    elif isinstance(rolling, dict):
        surge, unavailable = rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%")
        for name, value in (("maxUnavailable", unavailable), ("maxSurge", surge)):
            if not _int_or_percent(value):
                errors.append(FieldError(f"spec.strategy.rollingUpdate.{name}", ErrorType.INVALID, value,
                                         "must be greater than or equal to 0" if isinstance(value, int)
                                         else "a valid percent string must be a numeric string followed by an "
                                              "ending '%' (e.g. '1%',  or '93%', regex used for validation is "
                                              "'[0-9]+%')"))
        if str(surge) in ("0", "0%") and str(unavailable) in ("0", "0%"):
            errors.append(FieldError("spec.strategy.rollingUpdate.maxUnavailable", ErrorType.INVALID, unavailable,
                                     "may not be 0 when `maxSurge` is 0"))
        elif isinstance(unavailable, str) and unavailable.endswith("%") and unavailable[:-1].isdigit() \
                and int(unavailable[:-1]) > 100:
            errors.append(FieldError("spec.strategy.rollingUpdate.maxUnavailable", ErrorType.INVALID, unavailable,
                                     "must not be greater than 100%"))
    return errors


def validate_replicaset(obj: dict) -> list[FieldError]:
    return _validate_replicated(obj)


_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


def validate_service(obj: dict) -> list[FieldError]:
    errors = validate_metadata(obj, True, name_rule="dns1035")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return errors + [FieldError("spec", ErrorType.REQUIRED)]
    svc_type = spec.get("type", "ClusterIP")
    if svc_type not in _SERVICE_TYPES:
        errors.append(FieldError("spec.type", ErrorType.NOT_SUPPORTED, svc_type,
                                 'supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'))
    ports = spec.get("ports") or []
    if not ports and svc_type != "ExternalName" and spec.get("clusterIP") != "None":
        errors.append(FieldError("spec.ports", ErrorType.REQUIRED))
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    for i, port in enumerate(ports):
        ppath = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            errors.append(FieldError(ppath, ErrorType.INVALID, port, "must be an object"))
            continue
        name = port.get("name", "")
        if len(ports) > 1 and not name:
            errors.append(FieldError(f"{ppath}.name", ErrorType.REQUIRED))
        elif name:
            err = name_error(f"{ppath}.name", str(name), "label")
            if err:
                errors.append(err)
            if name in seen_names:
                errors.append(FieldError(f"{ppath}.name", ErrorType.DUPLICATE, name))
            seen_names.add(name)
        if not _port_ok(port.get("port")):
            errors.append(_port_range_error(f"{ppath}.port", port.get("port")))
        proto = port.get("protocol", "TCP")
        if bad_protocol := _protocol_error(f"{ppath}.protocol", proto):
            errors.append(bad_protocol)
        elif _port_ok(port.get("port")):
            if (port["port"], proto) in seen_ports:
                errors.append(FieldError(ppath, ErrorType.DUPLICATE, {"port": port["port"], "protocol": proto}))
            seen_ports.add((port["port"], proto))
        target = port.get("targetPort")
        if target is not None:
            if isinstance(target, int) and not isinstance(target, bool):
                if not _port_ok(target):
                    errors.append(_port_range_error(f"{ppath}.targetPort", target))
            elif not (isinstance(target, str) and is_dns1123_label(target) and len(target) <= 15):
                errors.append(FieldError(f"{ppath}.targetPort", ErrorType.INVALID, target,
                                         "must contain at least one letter (a-z), at most 15 characters"))
        node_port = port.get("nodePort")
        if node_port is not None and node_port != 0:
            if svc_type not in ("NodePort", "LoadBalancer"):
                errors.append(FieldError(f"{ppath}.nodePort", ErrorType.FORBIDDEN,
                                         detail="may not be used when `type` is 'ClusterIP'"))
            elif not _port_ok(node_port):
                errors.append(_port_range_error(f"{ppath}.nodePort", node_port))
    cluster_ip = spec.get("clusterIP")
    if cluster_ip not in (None, "", "None"):
        try:
            ipaddress.ip_address(cluster_ip)
        except ValueError:
            errors.append(FieldError("spec.clusterIP", ErrorType.INVALID, cluster_ip,
                                     "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
    selector = spec.get("selector")
    if selector is not None:
        errors += validate_labels(selector, "spec.selector")
    errors += _service_traffic_errors(spec, svc_type)
    return errors


def _service_traffic_errors(spec: dict, svc_type: str) -> list[FieldError]:
    """externalIPs, load balancer fields, traffic policies and session affinity, as kube-apiserver checks them."""
    errors: list[FieldError] = []
    for i, ip in enumerate(spec.get("externalIPs") or []):
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            errors.append(FieldError(f"spec.externalIPs[{i}]", ErrorType.INVALID, ip,
                                     "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
            continue
        if address.is_unspecified or address.is_loopback or address.is_multicast or address.is_link_local:
            errors.append(FieldError(f"spec.externalIPs[{i}]", ErrorType.INVALID, ip,
                                     "may not be unspecified, loopback, multicast or link-local"))
    for i, cidr in enumerate(spec.get("loadBalancerSourceRanges") or []):
        try:
            ipaddress.ip_network(str(cidr).strip(), strict=False)
        except ValueError:
            errors.append(FieldError(f"spec.loadBalancerSourceRanges[{i}]", ErrorType.INVALID, cidr,
                                     "must be a valid CIDR, (e.g. 10.0.0.0/8)"))
    if spec.get("loadBalancerSourceRanges") and svc_type != "LoadBalancer":
        errors.append(FieldError("spec.loadBalancerSourceRanges", ErrorType.FORBIDDEN,
                                 detail="may only be used when `type` is 'LoadBalancer'"))
    if spec.get("loadBalancerIP"):
        try:
            ipaddress.ip_address(spec["loadBalancerIP"])
        except ValueError:
            errors.append(FieldError("spec.loadBalancerIP", ErrorType.INVALID, spec["loadBalancerIP"],
                                     "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
    for field in ("externalTrafficPolicy", "internalTrafficPolicy"):
        value = spec.get(field)
        if value is not None and value not in ("Cluster", "Local"):
            errors.append(FieldError(f"spec.{field}", ErrorType.NOT_SUPPORTED, value,
                                     'supported values: "Cluster", "Local"'))
    if spec.get("externalTrafficPolicy") and svc_type not in ("NodePort", "LoadBalancer") \
            and not spec.get("externalIPs"):
        errors.append(FieldError("spec.externalTrafficPolicy", ErrorType.INVALID, spec["externalTrafficPolicy"],
                                 "may only be set for externally-accessible services"))
    affinity = spec.get("sessionAffinity", "None")
    if affinity not in ("None", "ClientIP"):
        errors.append(FieldError("spec.sessionAffinity", ErrorType.NOT_SUPPORTED, affinity,
                                 'supported values: "ClientIP", "None"'))
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    if timeout is not None:
        if affinity != "ClientIP":
            errors.append(FieldError("spec.sessionAffinityConfig", ErrorType.INVALID, spec["sessionAffinityConfig"],
                                     "must not be set when `sessionAffinity` is None"))
        elif not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 < timeout <= 86400:
            errors.append(FieldError("spec.sessionAffinityConfig.clientIP.timeoutSeconds", ErrorType.INVALID,
                                     timeout, "must be greater than 0 and less than 86400"))
    return errors


def validate_namespace(obj: dict) -> list[FieldError]:
    return validate_metadata(obj, False, name_rule="label")


def validate_node(obj: dict) -> list[FieldError]:
    errors = validate_metadata(obj, False)
    cidr = (obj.get("spec") or {}).get("podCIDR")
    if cidr:
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            errors.append(FieldError("spec.podCIDR", ErrorType.INVALID, cidr, "must be a valid CIDR"))
    return errors


def validate_endpointslice(obj: dict) -> list[FieldError]:
    errors = validate_metadata(obj, True)
    if obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
        errors.append(FieldError("addressType", ErrorType.NOT_SUPPORTED, obj.get("addressType"),
                                 'supported values: "FQDN", "IPv4", "IPv6"'))
    for i, ep in enumerate(obj.get("endpoints") or []):
        if not ep.get("addresses"):
            errors.append(FieldError(f"endpoints[{i}].addresses", ErrorType.REQUIRED))
    return errors


VALIDATORS: dict[str, Callable[[dict], list[FieldError]]] = {
    "Namespace": validate_namespace,
    "Node": validate_node,
    "Pod": validate_pod,
    "Service": validate_service,
    "Deployment": validate_deployment,
    "ReplicaSet": validate_replicaset,
    "EndpointSlice": validate_endpointslice,
}


def validate(kind: str, obj: dict) -> list[FieldError]:
    validator = VALIDATORS.get(kind)
    return validator(obj) if validator else validate_metadata(obj, True)
