"""A pod's identity files: hostname, ``/etc/hosts`` and ``/etc/resolv.conf``.

The kubelet gives every pod a hostname (``spec.hostname`` or the pod name, cut
to 63 characters; ``spec.subdomain`` adds ``<subdomain>.<ns>.svc.<domain>``),
a managed hosts file and a resolv.conf chosen by ``dnsPolicy`` (ClusterFirst,
ClusterFirstWithHostNet, Default, None) merged with ``dnsConfig``. The
rendering here is pure and mirrors pkg/kubelet (``managedHostsFileContent``,
``GeneratePodHostNameAndDomain``) and pkg/kubelet/network/dns (``GetPodDNS``,
``formDNSConfigFitsLimits``); containerd's resolv.conf layout (search,
nameserver lines, options) is used for the text.

The files land in ``/etc/netns/<pod netns>/``, which ``ip netns exec``
bind-mounts over ``/etc/<file>`` for every process it starts; teardown
removes that directory (also after a crash, for every recorded namespace).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address
from pathlib import Path

from netk8s.errors import KernelError, ValidationError

log = logging.getLogger(__name__)

ETC_NETNS = Path("/etc/netns")
HOSTNAME_MAX = 63
FQDN_MAX = 64
MAX_NAMESERVERS = 3
MAX_SEARCH_PATHS = 32
MAX_SEARCH_CHARS = 2048
MAX_DNS_NAME = 253
DEFAULT_DNS_OPTIONS = ("ndots:5",)
MANAGED_HOSTS_HEADER = "# Kubernetes-managed hosts file.\n"
MANAGED_HOSTS_HEADER_HOST_NETWORK = "# Kubernetes-managed hosts file (host network).\n"
SYSTEMD_RESOLVED_STUB = "127.0.0.53"
SYSTEMD_RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class DnsPolicy(str, Enum):
    CLUSTER_FIRST = "ClusterFirst"
    CLUSTER_FIRST_WITH_HOST_NET = "ClusterFirstWithHostNet"
    DEFAULT = "Default"
    NONE = "None"


class PodDnsType(str, Enum):
    """What the kubelet resolves a policy to (``getPodDNSType``)."""

    CLUSTER = "cluster"
    HOST = "host"
    NONE = "none"


@dataclass(frozen=True)
class PodIdentity:
    """The pod's hostname and, with a subdomain, its DNS domain (``<sub>.<ns>.svc.<cluster domain>``)."""

    hostname: str
    domain: str = ""

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{self.domain}" if self.domain else self.hostname


@dataclass
class DnsConfig:
    nameservers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass
class DnsResult:
    """The rendered DNS config and the kubelet's warnings (``DNSConfigForming`` events) about trimming."""

    config: DnsConfig
    warnings: list[str] = field(default_factory=list)


# -- hostname ---------------------------------------------------------------------------------

def _is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1123_LABEL.match(value))


def truncate_hostname(pod_name: str, hostname: str) -> str:
    """Cap a hostname at 63 characters without a trailing '-' or '.', as the kubelet does."""
    if len(hostname) <= HOSTNAME_MAX:
        return hostname
    truncated = hostname[:HOSTNAME_MAX].rstrip("-.")
    if not truncated:
        raise ValidationError("spec.hostname", f"hostname for pod {pod_name!r} was invalid: {hostname!r}")
    return truncated


def pod_identity(pod: dict, cluster_domain: str) -> PodIdentity:
    """Hostname and domain of a pod (``GeneratePodHostNameAndDomain``)."""
    md, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    name = str(md.get("name", ""))
    hostname = name
    if spec.get("hostname"):
        if not _is_dns1123_label(str(spec["hostname"])):
            raise ValidationError("spec.hostname", f"pod Hostname {spec['hostname']!r} is not a valid DNS label")
        hostname = str(spec["hostname"])
    hostname = truncate_hostname(name, hostname)
    domain = ""
    if spec.get("subdomain"):
        if not _is_dns1123_label(str(spec["subdomain"])):
            raise ValidationError("spec.subdomain", f"pod Subdomain {spec['subdomain']!r} is not a valid DNS label")
        domain = f"{spec['subdomain']}.{md.get('namespace') or 'default'}.svc.{cluster_domain}"
    return PodIdentity(hostname, domain)


def kernel_hostname(pod: dict, identity: PodIdentity) -> str:
    """The name the pod's UTS namespace carries: the FQDN with ``setHostnameAsFQDN``, else the short name."""
    if not (pod.get("spec") or {}).get("setHostnameAsFQDN") or not identity.domain:
        return identity.hostname
    fqdn = identity.fqdn
    if len(fqdn) > FQDN_MAX:
        raise ValidationError("spec.setHostnameAsFQDN",
                              f"failed to construct FQDN from pod hostname and cluster domain, FQDN {fqdn} is too "
                              f"long ({FQDN_MAX} characters is the max, {len(fqdn)} characters requested)")
    return fqdn


# -- /etc/hosts ---------------------------------------------------------------------------------

def _host_alias_lines(host_aliases: list[dict] | None) -> str:
    if not host_aliases:
        return ""
    lines = ["", "# Entries added by HostAliases."]
    for alias in host_aliases:
        for hostname in alias.get("hostnames") or []:
            lines.append(f"{alias.get('ip', '')}\t{hostname}")
    return "\n".join(lines) + "\n"


def render_hosts(pod_ips: list[str], identity: PodIdentity, host_aliases: list[dict] | None = None) -> str:
    """The managed hosts file of a pod with its own network namespace."""
    text = MANAGED_HOSTS_HEADER
    text += "127.0.0.1\tlocalhost\n"
    text += "::1\tlocalhost ip6-localhost ip6-loopback\n"
    text += "fe00::0\tip6-localnet\n"
    text += "fe00::0\tip6-mcastprefix\n"
    text += "fe00::1\tip6-allnodes\n"
    text += "fe00::2\tip6-allrouters\n"
    for ip in pod_ips:
        if identity.domain:
            text += f"{ip}\t{identity.hostname}.{identity.domain}\t{identity.hostname}\n"
        else:
            text += f"{ip}\t{identity.hostname}\n"
    return text + _host_alias_lines(host_aliases)


def render_hosts_host_network(node_hosts: str, host_aliases: list[dict] | None = None) -> str:
    """A hostNetwork pod's hosts file: the node's own, under the managed header, plus hostAliases."""
    return MANAGED_HOSTS_HEADER_HOST_NETWORK + node_hosts + _host_alias_lines(host_aliases)


# -- /etc/resolv.conf -------------------------------------------------------------------------

def parse_resolv_conf(text: str) -> DnsConfig:
    """nameserver, search (or domain) and options lines of a resolv.conf; the last search/domain wins."""
    config = DnsConfig()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        key, values = fields[0], fields[1:]
        if key == "nameserver" and values:
            config.nameservers.append(values[0])
        elif key in ("search", "domain"):
            config.searches = [v.rstrip(".") for v in values if v != "."]
        elif key == "options":
            config.options.extend(values)
    return config


def render_resolv_conf(config: DnsConfig) -> str:
    text = ""
    if config.searches:
        text += f"search {' '.join(config.searches)}\n"
    for server in config.nameservers:
        text += f"nameserver {server}\n"
    if config.options:
        text += f"options {' '.join(config.options)}\n"
    return text


def dns_type(pod: dict) -> PodDnsType:
    spec = pod.get("spec") or {}
    try:
        policy = DnsPolicy(spec.get("dnsPolicy") or DnsPolicy.CLUSTER_FIRST.value)
    except ValueError:
        raise ValidationError("spec.dnsPolicy", f"unsupported value {spec.get('dnsPolicy')!r}: supported values: "
                              + ", ".join(f'"{p.value}"' for p in DnsPolicy)) from None
    if policy is DnsPolicy.NONE:
        return PodDnsType.NONE
    if policy is DnsPolicy.CLUSTER_FIRST_WITH_HOST_NET:
        return PodDnsType.CLUSTER
    if policy is DnsPolicy.CLUSTER_FIRST and not spec.get("hostNetwork"):
        return PodDnsType.CLUSTER
    return PodDnsType.HOST  # Default, or ClusterFirst on the host network (the kubelet's fallback)


def _omit_duplicates(values: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for value in values:
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def _merge_options(existing: list[str], extra: list[dict]) -> list[str]:
    """Options by name; dnsConfig's entries override (insertion order kept, unlike Go's map)."""
    merged: dict[str, str] = {}
    for option in existing:
        name, _, value = option.partition(":")
        merged[name] = value
    for option in extra:
        merged[str(option.get("name", ""))] = "" if option.get("value") is None else str(option["value"])
    return [f"{name}:{value}" if value else name for name, value in merged.items() if name]


def pod_dns(pod: dict, cluster_dns: list[IPv4Address], cluster_domain: str, node: DnsConfig) -> DnsResult:
    """The pod's DNS config (``GetPodDNS`` + ``formDNSConfigFitsLimits``)."""
    kind = dns_type(pod)
    if kind is PodDnsType.NONE:
        config = DnsConfig()
    elif kind is PodDnsType.CLUSTER and cluster_dns:
        namespace = (pod.get("metadata") or {}).get("namespace") or "default"
        searches = node.searches
        if cluster_domain:
            searches = _omit_duplicates([f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}",
                                         cluster_domain, *node.searches])
        config = DnsConfig([str(ip) for ip in cluster_dns], list(searches), list(DEFAULT_DNS_OPTIONS))
    else:
        config = DnsConfig(list(node.nameservers), list(node.searches), list(node.options))
    extra = (pod.get("spec") or {}).get("dnsConfig")
    if isinstance(extra, dict):
        config.nameservers = _omit_duplicates(config.nameservers + [str(s) for s in extra.get("nameservers") or []])
        config.searches = _omit_duplicates(config.searches + [str(s) for s in extra.get("searches") or []])
        config.options = _merge_options(config.options, [o for o in extra.get("options") or []
                                                         if isinstance(o, dict)])
    return _fit_limits(config)


def _fit_limits(config: DnsConfig) -> DnsResult:
    warnings = []
    if len(config.nameservers) > MAX_NAMESERVERS:
        config.nameservers = config.nameservers[:MAX_NAMESERVERS]
        warnings.append("Nameserver limits were exceeded, some nameservers have been omitted, the applied "
                        f"nameserver line is: {' '.join(config.nameservers)}")
    searches = list(config.searches)
    trimmed = False
    if len(searches) > MAX_SEARCH_PATHS:
        searches = searches[:MAX_SEARCH_PATHS]
        trimmed = True
    # glibc aborts on a search path longer than a DNS name; the kubelet drops those.
    kept = [s for s in searches if len(s) <= MAX_DNS_NAME]
    trimmed = trimmed or len(kept) != len(searches)
    searches = kept
    while searches and len(" ".join(searches)) > MAX_SEARCH_CHARS:
        searches = searches[:-1]
        trimmed = True
    if trimmed:
        warnings.append("Search Line limits were exceeded, some search paths have been omitted, the applied "
                        f"search line is: {' '.join(searches)}")
    config.searches = searches
    return DnsResult(config, warnings)


# -- files on disk (the only side effects here) ---------------------------------------------------

def node_file(node_netns: str, name: str, etc_netns: Path = ETC_NETNS) -> str:
    """An /etc file as processes in the node's namespace see it (``/etc/netns/<node>/`` first)."""
    for path in (etc_netns / node_netns / name, Path("/etc") / name):
        try:
            return path.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc.strerror)
    return ""


def node_resolv_conf(node_netns: str, etc_netns: Path = ETC_NETNS) -> DnsConfig:
    """The node's resolver config; a systemd-resolved stub is replaced by its upstream file, as kubeadm does."""
    config = parse_resolv_conf(node_file(node_netns, "resolv.conf", etc_netns))
    if config.nameservers == [SYSTEMD_RESOLVED_STUB] and SYSTEMD_RESOLVED_UPSTREAM.exists():
        config = parse_resolv_conf(SYSTEMD_RESOLVED_UPSTREAM.read_text())
    return config


def write_pod_files(netns_name: str, files: dict[str, str], etc_netns: Path = ETC_NETNS) -> Path:
    """Write ``/etc/netns/<netns>/<file>`` for each file (``ip netns exec`` mounts each over /etc/<file>)."""
    directory = etc_netns / netns_name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            tmp = directory / f".{name}.tmp"
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / name)
    except OSError as exc:
        raise KernelError(f"cannot write the pod files in {directory}: {exc.strerror}") from None
    return directory


def remove_pod_files(netns_name: str, etc_netns: Path = ETC_NETNS) -> None:
    directory = etc_netns / netns_name
    if directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)
