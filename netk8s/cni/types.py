"""CNI protocol values: environment, network configuration, results and errors.

Everything here is pure: it parses and validates what a runtime hands a CNI
plugin (``CNI_*`` environment variables and the JSON network configuration on
stdin), renders what the plugin answers (the result and error JSON of the CNI
spec 1.0/1.1), and names the per-container iptables chain the way the
reference ``bridge`` plugin does. Nothing here touches the kernel, so all of
it is unit-tested without root.

Validation order follows the reference plugins: environment first (code 4),
then JSON decoding (code 6), then ``cniVersion`` (code 1), then every other
field (code 7). Every message names the offending variable or field.

The value types are ``typing.NamedTuple`` rather than dataclasses: the
``netk8s-cni`` executable imports this module on every call, and dataclasses
(the import of ``inspect`` plus an ``exec`` per class) would add ~15 ms to a
run that has to stay within ~3x the reference plugin's ~15 ms.
"""


import enum
import ipaddress
import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence, Union

from netk8s.errors import NetK8sError

PLUGIN_TYPE = "netk8s-cni"
CNI_VERSION = "1.1.0"
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_DATA_DIR = Path("/var/lib/cni/networks")
DEFAULT_BRIDGE = "cni0"
DEFAULT_MTU = 1500
VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

# Container IDs and network names: alphanumeric first, then alphanumerics, "_", "." or "-" (spec 1.0).
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.-")  # a set, not a regex: compiling one costs the executable ~0.3 ms
_CHAIN_PREFIX = "CNI-"
_MAX_CHAIN_LEN = 28
_MAX_COMMENT_LEN = 256
MULTICAST_NET = ipaddress.IPv4Network("224.0.0.0/4")


class ErrorCode(enum.IntEnum):
    """Well-known CNI error codes (spec 1.1, "Error" section) plus the libcni generic 999."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    NOT_AVAILABLE_LIMITED = 51
    INTERNAL = 999


class CNIError(NetK8sError):
    """A CNI failure as the spec defines it: numeric code, one-line msg, optional details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        self.code = int(code)
        self.msg = msg
        self.details = details
        super().__init__(msg if not details else f"{msg} ({details})")

    def to_json(self, cni_version: str = CNI_VERSION) -> dict[str, Any]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}


class Command(enum.Enum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    VERSION = "VERSION"
    GC = "GC"
    STATUS = "STATUS"


# --------------------------------------------------------------------------- versions


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; raises ValueError for anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a semantic version: {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def version_at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def version_json() -> dict[str, Any]:
    """The answer to the VERSION command."""
    return {"cniVersion": CNI_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _check_version(version: str, command: Command) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(ErrorCode.INCOMPATIBLE_VERSION,
                       f"cniVersion: {version!r} is not supported; use one of {', '.join(SUPPORTED_VERSIONS)}",
                       f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}")
    minimum = {Command.CHECK: "0.4.0", Command.GC: "1.1.0", Command.STATUS: "1.1.0"}.get(command)
    if minimum and not version_at_least(version, minimum):
        raise CNIError(ErrorCode.INCOMPATIBLE_VERSION,
                       f"cniVersion: {version} does not allow {command.value}; it needs cniVersion {minimum} or later")


# --------------------------------------------------------------------------- environment


def valid_ifname(name: str) -> bool:
    """Linux interface name rules the spec repeats: 1-15 chars, not . or .., no / : or whitespace."""
    return (0 < len(name) < 16 and name not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in name))


def valid_identifier(value: str) -> bool:
    """Container ID / network name rule of the spec."""
    return bool(value) and value[0] in _ALNUM and all(c in _ID_CHARS for c in value)


class CniEnv(NamedTuple):
    """The ``CNI_*`` environment of one invocation."""

    command: Command
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: tuple[tuple[str, str], ...] = ()
    path: tuple[str, ...] = ()


def parse_command(environ: Mapping[str, str]) -> Command:
    value = environ.get("CNI_COMMAND", "")
    if not value:
        raise CNIError(ErrorCode.INVALID_ENVIRONMENT, "CNI_COMMAND: required environment variable is missing")
    try:
        return Command(value)
    except ValueError:
        names = ", ".join(c.value for c in Command)
        raise CNIError(ErrorCode.INVALID_ENVIRONMENT,
                       f"CNI_COMMAND: unknown command {value!r}; use one of {names}") from None


def parse_cni_args(value: str) -> tuple[tuple[str, str], ...]:
    """``"K=V;K2=V2"`` -> pairs; empty items are skipped, an item without ``=`` is an error."""
    pairs: list[tuple[str, str]] = []
    for item in value.split(";"):
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CNIError(ErrorCode.INVALID_ENVIRONMENT,
                           f"CNI_ARGS: invalid pair {item!r}; use KEY=VALUE items separated by ';'")
        pairs.append((key, val))
    return tuple(pairs)


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """Validate the environment for the command it names (code 4 on any problem)."""
    command = parse_command(environ)
    if command in (Command.VERSION, Command.GC, Command.STATUS):
        path = tuple(p for p in environ.get("CNI_PATH", "").split(":") if p)
        return CniEnv(command=command, path=path)

    def need(name: str) -> str:
        value = environ.get(name, "")
        if not value:
            raise CNIError(ErrorCode.INVALID_ENVIRONMENT,
                           f"{name}: required environment variable is missing for {command.value}")
        return value

    container_id = need("CNI_CONTAINERID")
    if not valid_identifier(container_id):
        raise CNIError(ErrorCode.INVALID_ENVIRONMENT,
                       f"CNI_CONTAINERID: {container_id!r} is invalid; start with a letter or digit and use only "
                       "letters, digits, '_', '.' and '-'")
    ifname = need("CNI_IFNAME")
    if not valid_ifname(ifname):
        raise CNIError(ErrorCode.INVALID_ENVIRONMENT,
                       f"CNI_IFNAME: {ifname!r} is not a valid interface name; use 1-15 characters without "
                       "'/', ':' or whitespace")
    netns = need("CNI_NETNS") if command in (Command.ADD, Command.CHECK) else environ.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        raise CNIError(ErrorCode.INVALID_ENVIRONMENT,
                       f"CNI_NETNS: {netns!r} is not an absolute path; pass the namespace file, e.g. /run/netns/NAME")
    return CniEnv(command=command, container_id=container_id, netns=netns, ifname=ifname,
                  args=parse_cni_args(environ.get("CNI_ARGS", "")),
                  path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p))


# --------------------------------------------------------------------------- results


class Interface(NamedTuple):
    name: str
    mac: str = ""
    sandbox: str = ""


class IpConfig(NamedTuple):
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


class Route(NamedTuple):
    dst: IPNetwork
    gw: IPAddress | None = None


class Dns(NamedTuple):
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


class Result(NamedTuple):
    """An ADD result; ``to_json`` renders the shape of ``cni_version``."""

    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IpConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: Dns = Dns()

    def to_json(self) -> dict[str, Any]:
        # 0.3.x/0.4.0 results carry "version" per IP; 1.0.0 dropped it.
        legacy = not version_at_least(self.cni_version, "1.0.0")
        interfaces = []
        for iface in self.interfaces:
            item: dict[str, Any] = {"name": iface.name}
            if iface.mac:
                item["mac"] = iface.mac
            if iface.sandbox:
                item["sandbox"] = iface.sandbox
            interfaces.append(item)
        ips = []
        for ipc in self.ips:
            entry: dict[str, Any] = {}
            if legacy:
                entry["version"] = str(ipc.address.version)
            if ipc.interface is not None:
                entry["interface"] = ipc.interface
            entry["address"] = str(ipc.address)
            if ipc.gateway is not None:
                entry["gateway"] = str(ipc.gateway)
            ips.append(entry)
        routes = []
        for route in self.routes:
            r: dict[str, Any] = {"dst": str(route.dst)}
            if route.gw is not None:
                r["gw"] = str(route.gw)
            routes.append(r)
        return {"cniVersion": self.cni_version, "interfaces": interfaces, "ips": ips, "routes": routes,
                "dns": self.dns.to_json()}


# --------------------------------------------------------------------------- field helpers


def _invalid(path: str, msg: str) -> CNIError:
    return CNIError(ErrorCode.INVALID_NETWORK_CONFIG, f"{path}: {msg}")


def _reject_unknown(obj: Mapping[str, Any], known: Sequence[str], path: str) -> None:
    for key in obj:
        if key not in known:
            where = f"{path}.{key}" if path else key
            raise _invalid(where, f"unknown field; netk8s-cni accepts {', '.join(known)}")


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(path, "must be a JSON object")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(path, "must be a JSON array")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _invalid(path, "must be a string")
    return value


def _bool(obj: Mapping[str, Any], key: str, path: str, default: bool = False) -> bool:
    if key not in obj:
        return default
    value = obj[key]
    if not isinstance(value, bool):
        raise _invalid(f"{path}{key}", "must be true or false")
    return value


def _address(value: Any, path: str) -> IPAddress:
    try:
        return ipaddress.ip_address(_str(value, path))
    except ValueError:
        raise _invalid(path, f"{value!r} is not an IP address") from None


def _network(value: Any, path: str) -> IPNetwork:
    text = _str(value, path)
    try:
        # strict=False: "10.244.1.7/24" names the subnet 10.244.1.0/24, like the reference parser.
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _invalid(path, f"{text!r} is not a CIDR such as 10.244.1.0/24") from None


def _interface(value: Any, path: str) -> IPInterface:
    text = _str(value, path)
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise _invalid(path, f"{text!r} is not an address with prefix such as 10.244.1.5/24") from None
    if "/" not in text:
        raise _invalid(path, f"{text!r} lacks a prefix length; write it as address/prefix")
    return iface


def _str_list(value: Any, path: str) -> tuple[str, ...]:
    return tuple(_str(v, f"{path}[{i}]") for i, v in enumerate(_list(value, path)))


def _dns(value: Any, path: str) -> Dns:
    obj = _obj(value, path)
    _reject_unknown(obj, ("nameservers", "domain", "search", "options"), path)
    return Dns(nameservers=_str_list(obj.get("nameservers", []), f"{path}.nameservers"),
               domain=_str(obj.get("domain", ""), f"{path}.domain"),
               search=_str_list(obj.get("search", []), f"{path}.search"),
               options=_str_list(obj.get("options", []), f"{path}.options"))


# --------------------------------------------------------------------------- IPAM configuration


class IpamRange(NamedTuple):
    """One host-local range, canonical: start/end/gateway always set."""

    subnet: IPNetwork
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress | None

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.subnet.version and int(self.range_start) <= int(ip) <= int(self.range_end)

    def overlaps(self, other: "IpamRange") -> bool:
        return (self.subnet.version == other.subnet.version
                and int(self.range_start) <= int(other.range_end)
                and int(other.range_start) <= int(self.range_end))

    def __str__(self) -> str:
        return f"{self.range_start}-{self.range_end}"


def make_range(subnet: IPNetwork, range_start: IPAddress | None = None, range_end: IPAddress | None = None,
               gateway: IPAddress | None = None, path: str = "range", default_gateway: bool = True) -> IpamRange:
    """Canonicalise a range the way host-local does; errors name ``path``."""
    if subnet.num_addresses < 4:
        raise _invalid(f"{path}.subnet", f"{subnet} is too small to allocate from; use a /30 or larger")
    first_host = subnet.network_address + 1
    # IPv4 never hands out the broadcast address; IPv6 has none.
    last_host = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    start = range_start if range_start is not None else first_host
    end = range_end if range_end is not None else last_host
    for key, ip in (("rangeStart", start), ("rangeEnd", end)):
        if ip.version != subnet.version or not first_host <= ip <= last_host:  # type: ignore[operator]
            raise _invalid(f"{path}.{key}", f"{ip} is not a usable address of subnet {subnet}")
    if int(start) > int(end):
        raise _invalid(f"{path}.rangeStart", f"{start} is after rangeEnd {end}")
    gw = gateway if gateway is not None else (first_host if default_gateway else None)
    if gw is not None and (gw.version != subnet.version or gw not in subnet):
        raise _invalid(f"{path}.gateway", f"{gw} is not inside subnet {subnet}")
    return IpamRange(subnet=subnet, range_start=start, range_end=end, gateway=gw)


def range_from_json(obj: Any, path: str) -> IpamRange:
    obj = _obj(obj, path)
    _reject_unknown(obj, ("subnet", "rangeStart", "rangeEnd", "gateway"), path)
    if "subnet" not in obj:
        raise _invalid(f"{path}.subnet", "required, e.g. \"10.244.1.0/24\"")
    subnet = _network(obj["subnet"], f"{path}.subnet")
    start = _address(obj["rangeStart"], f"{path}.rangeStart") if "rangeStart" in obj else None
    end = _address(obj["rangeEnd"], f"{path}.rangeEnd") if "rangeEnd" in obj else None
    gateway = _address(obj["gateway"], f"{path}.gateway") if "gateway" in obj else None
    return make_range(subnet, start, end, gateway, path)


def check_range_sets(range_sets: Sequence[Sequence[IpamRange]], path: str = "ipam.ranges") -> None:
    """Ranges must not overlap (within or across sets); a set holds one address family."""
    flat = [(i, j, r) for i, rs in enumerate(range_sets) for j, r in enumerate(rs)]
    for i, rs in enumerate(range_sets):
        if len({r.subnet.version for r in rs}) > 1:
            raise _invalid(f"{path}[{i}]", "mixes IPv4 and IPv6 ranges; put each family in its own range set")
    for a in range(len(flat)):
        for b in range(a + 1, len(flat)):
            i1, j1, r1 = flat[a]
            i2, j2, r2 = flat[b]
            if r1.overlaps(r2):
                raise _invalid(f"{path}[{i2}][{j2}]", f"range {r2} overlaps {path}[{i1}][{j1}] ({r1})")


class IpamConfig(NamedTuple):
    type: str
    range_sets: tuple[tuple[IpamRange, ...], ...]
    routes: tuple[Route, ...] = ()
    data_dir: Path = DEFAULT_DATA_DIR


_IPAM_FIELDS = ("type", "ranges", "routes", "dataDir", "subnet", "rangeStart", "rangeEnd", "gateway")


def parse_ipam(value: Any, path: str = "ipam", ipv4_only: bool = True) -> IpamConfig:
    obj = _obj(value, path)
    _reject_unknown(obj, _IPAM_FIELDS, path)
    ipam_type = _str(obj.get("type", ""), f"{path}.type")
    if ipam_type != "host-local":
        raise _invalid(f"{path}.type", f"{ipam_type!r} is not supported; netk8s-cni has built-in \"host-local\"")
    legacy = [k for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in obj]
    if legacy and "ranges" in obj:
        raise _invalid(f"{path}.{legacy[0]}", "cannot be combined with ipam.ranges; move it into a range")
    range_sets: list[tuple[IpamRange, ...]] = []
    if legacy:
        # The pre-"ranges" host-local form: one range given at the ipam level.
        single = {k: obj[k] for k in legacy}
        range_sets.append((range_from_json(single, path),))
    else:
        if "ranges" not in obj:
            raise _invalid(f"{path}.ranges", "required, e.g. [[{\"subnet\": \"10.244.1.0/24\"}]]")
        sets = _list(obj["ranges"], f"{path}.ranges")
        if not sets:
            raise _invalid(f"{path}.ranges", "must hold at least one range set")
        for i, rs in enumerate(sets):
            items = _list(rs, f"{path}.ranges[{i}]")
            if not items:
                raise _invalid(f"{path}.ranges[{i}]", "must hold at least one range")
            range_sets.append(tuple(range_from_json(r, f"{path}.ranges[{i}][{j}]") for j, r in enumerate(items)))
    if ipv4_only:
        for i, rs in enumerate(range_sets):
            for j, r in enumerate(rs):
                if r.subnet.version != 4:
                    raise _invalid(f"{path}.ranges[{i}][{j}].subnet",
                                   f"{r.subnet} is IPv6; netk8s-cni supports IPv4 subnets only")
    check_range_sets(range_sets, f"{path}.ranges")
    routes: list[Route] = []
    for i, r in enumerate(_list(obj.get("routes", []), f"{path}.routes")):
        rpath = f"{path}.routes[{i}]"
        robj = _obj(r, rpath)
        _reject_unknown(robj, ("dst", "gw"), rpath)
        if "dst" not in robj:
            raise _invalid(f"{rpath}.dst", "required, e.g. \"0.0.0.0/0\"")
        dst = _network(robj["dst"], f"{rpath}.dst")
        gw = _address(robj["gw"], f"{rpath}.gw") if "gw" in robj else None
        if gw is not None and gw.version != dst.version:
            raise _invalid(f"{rpath}.gw", f"{gw} is not of the address family of {dst}")
        if ipv4_only and dst.version != 4:
            raise _invalid(f"{rpath}.dst", f"{dst} is IPv6; netk8s-cni supports IPv4 routes only")
        routes.append(Route(dst=dst, gw=gw))
    data_dir = Path(_str(obj.get("dataDir", str(DEFAULT_DATA_DIR)), f"{path}.dataDir"))
    if not data_dir.is_absolute():
        raise _invalid(f"{path}.dataDir", f"{str(data_dir)!r} must be an absolute path")
    return IpamConfig(type=ipam_type, range_sets=tuple(range_sets), routes=tuple(routes), data_dir=data_dir)


# --------------------------------------------------------------------------- network configuration


class NetConf(NamedTuple):
    """A validated netk8s-cni network configuration."""

    cni_version: str
    name: str
    type: str
    ipam: IpamConfig
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False
    is_default_gateway: bool = False
    ip_masq: bool = False
    hairpin_mode: bool = False
    promisc_mode: bool = False
    mtu: int = DEFAULT_MTU
    dns: Dns = Dns()
    prev_result: Result | None = None
    valid_attachments: frozenset[tuple[str, str]] | None = None


_NETCONF_FIELDS = ("cniVersion", "name", "type", "bridge", "isGateway", "isDefaultGateway", "ipMasq", "hairpinMode",
                   "mtu", "promiscMode", "ipam", "dns", "prevResult", "args", "runtimeConfig", "capabilities",
                   VALID_ATTACHMENTS_KEY)


def decode_json(data: bytes | str, what: str = "network configuration") -> Any:
    try:
        text = data.decode() if isinstance(data, bytes) else data
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CNIError(ErrorCode.DECODING_FAILURE, f"{what}: cannot decode JSON from stdin: {exc}") from None


def peek_version(data: bytes | str) -> str:
    """Best-effort ``cniVersion`` of raw stdin, for error replies; ours when unreadable or unsupported."""
    try:
        obj = decode_json(data)
    except CNIError:
        return CNI_VERSION
    version = obj.get("cniVersion") if isinstance(obj, dict) else None
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else CNI_VERSION


def parse_config(data: bytes | str, command: Command) -> NetConf:
    """Decode and validate stdin for ``command`` (codes 6, 1, 7)."""
    obj = decode_json(data)
    if not isinstance(obj, dict):
        raise _invalid("(root)", "network configuration must be a JSON object")
    if "cniVersion" not in obj:
        raise _invalid("cniVersion", f"required; use one of {', '.join(SUPPORTED_VERSIONS)}")
    version = _str(obj["cniVersion"], "cniVersion")
    _check_version(version, command)
    _reject_unknown(obj, _NETCONF_FIELDS, "")
    name = _str(obj.get("name", ""), "name")
    if not valid_identifier(name):
        raise _invalid("name", f"{name!r} is not a valid network name; start with a letter or digit and use only "
                               "letters, digits, '_', '.' and '-'")
    plugin_type = _str(obj.get("type", ""), "type")
    if plugin_type != PLUGIN_TYPE:
        raise _invalid("type", f"{plugin_type!r} is not this plugin; set \"type\": \"{PLUGIN_TYPE}\"")
    bridge = _str(obj.get("bridge", DEFAULT_BRIDGE), "bridge")
    if not valid_ifname(bridge):
        raise _invalid("bridge", f"{bridge!r} is not a valid interface name (1-15 characters)")
    mtu = obj.get("mtu", DEFAULT_MTU)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise _invalid("mtu", f"{mtu!r} must be an integer between 68 and 65535")
    for key in ("args", "runtimeConfig", "capabilities"):
        if key in obj:
            _obj(obj[key], key)  # contents are ignored, but the shape must be an object
    if "ipam" not in obj:
        raise _invalid("ipam", "required, e.g. {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": ...}]]}")
    ipam = parse_ipam(obj["ipam"])
    is_default_gateway = _bool(obj, "isDefaultGateway", "")
    routes_default = [r for r in ipam.routes if r.dst.prefixlen == 0]
    if is_default_gateway and any(r.gw is not None for r in routes_default):
        raise _invalid("isDefaultGateway", "is ineffective because ipam.routes already sets a default route with "
                                           "a gw; drop one of them")
    prev = parse_result(obj["prevResult"], "prevResult") if "prevResult" in obj else None
    valid: frozenset[tuple[str, str]] | None = None
    if VALID_ATTACHMENTS_KEY in obj:
        valid = parse_valid_attachments(obj[VALID_ATTACHMENTS_KEY])
    if command == Command.GC and valid is None:
        raise _invalid(VALID_ATTACHMENTS_KEY, "required for GC: list the attachments to keep "
                                              "([{\"containerID\": ..., \"ifname\": ...}], [] for none)")
    if command == Command.CHECK and prev is None:
        raise _invalid("prevResult", "required for CHECK: pass the result of the ADD being checked")
    return NetConf(
        cni_version=version, name=name, type=plugin_type, ipam=ipam, bridge=bridge,
        # isDefaultGateway implies isGateway, as in the reference bridge plugin.
        is_gateway=_bool(obj, "isGateway", "") or is_default_gateway,
        is_default_gateway=is_default_gateway,
        ip_masq=_bool(obj, "ipMasq", ""), hairpin_mode=_bool(obj, "hairpinMode", ""),
        promisc_mode=_bool(obj, "promiscMode", ""), mtu=mtu,
        dns=_dns(obj["dns"], "dns") if "dns" in obj else Dns(),
        prev_result=prev, valid_attachments=valid)


def parse_valid_attachments(value: Any) -> frozenset[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for i, item in enumerate(_list(value, VALID_ATTACHMENTS_KEY)):
        path = f"{VALID_ATTACHMENTS_KEY}[{i}]"
        obj = _obj(item, path)
        out.add((_str(obj.get("containerID"), f"{path}.containerID"), _str(obj.get("ifname"), f"{path}.ifname")))
    return frozenset(out)


def parse_result(value: Any, path: str = "prevResult") -> Result:
    """Read a result of any supported version (``version`` per IP is accepted and ignored)."""
    obj = _obj(value, path)
    version = _str(obj.get("cniVersion", CNI_VERSION), f"{path}.cniVersion")
    interfaces: list[Interface] = []
    for i, item in enumerate(_list(obj.get("interfaces", []), f"{path}.interfaces")):
        ipath = f"{path}.interfaces[{i}]"
        iobj = _obj(item, ipath)
        interfaces.append(Interface(name=_str(iobj.get("name"), f"{ipath}.name"),
                                    mac=_str(iobj.get("mac", ""), f"{ipath}.mac"),
                                    sandbox=_str(iobj.get("sandbox", ""), f"{ipath}.sandbox")))
    ips: list[IpConfig] = []
    for i, item in enumerate(_list(obj.get("ips", []), f"{path}.ips")):
        ipath = f"{path}.ips[{i}]"
        iobj = _obj(item, ipath)
        index = iobj.get("interface")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or not 0 <= index < len(interfaces)):
            raise _invalid(f"{ipath}.interface", f"{index!r} is not an index into {path}.interfaces")
        ips.append(IpConfig(address=_interface(iobj.get("address"), f"{ipath}.address"),
                            gateway=_address(iobj["gateway"], f"{ipath}.gateway") if "gateway" in iobj else None,
                            interface=index))
    routes: list[Route] = []
    for i, item in enumerate(_list(obj.get("routes", []), f"{path}.routes")):
        rpath = f"{path}.routes[{i}]"
        robj = _obj(item, rpath)
        routes.append(Route(dst=_network(robj.get("dst"), f"{rpath}.dst"),
                            gw=_address(robj["gw"], f"{rpath}.gw") if "gw" in robj else None))
    dns = _dns(obj["dns"], f"{path}.dns") if "dns" in obj else Dns()
    return Result(cni_version=version, interfaces=tuple(interfaces), ips=tuple(ips), routes=tuple(routes), dns=dns)


# --------------------------------------------------------------------------- result assembly and ipMasq naming


def result_routes(conf: NetConf, gateways: Sequence[IPAddress | None]) -> tuple[Route, ...]:
    """Routes the container gets: ipam routes, plus a default via the gateway when isDefaultGateway.

    A gw-less default route in ipam.routes is the same route as isDefaultGateway's,
    so it is reported once, with the gateway (the reference plugin fails on the
    duplicate with "file exists").
    """
    gateway = next((g for g in gateways if g is not None and g.version == 4), None)
    routes: list[Route] = []
    for r in conf.ipam.routes:
        if conf.is_default_gateway and r.dst.prefixlen == 0 and r.dst.version == 4:
            continue
        route = Route(dst=r.dst, gw=r.gw)
        if route not in routes:
            routes.append(route)
    if conf.is_default_gateway and gateway is not None:
        routes.append(Route(dst=ipaddress.IPv4Network("0.0.0.0/0"), gw=gateway))
    return tuple(routes)


def masq_chain_name(network: str, container_id: str, prefix: str = _CHAIN_PREFIX) -> str:
    """``prefix`` (``CNI-``) + sha512(network + container id) in hex, cut to 28 chars (the reference
    plugins' naming; portmap's DNAT chains use ``CNI-DN-``)."""
    import hashlib  # only ipMasq needs it; loading OpenSSL costs the executable ~4 ms

    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    return (prefix + digest)[:_MAX_CHAIN_LEN]


def masq_comment(network: str, container_id: str) -> str:
    return f"name: {json.dumps(network)} id: {json.dumps(container_id)}"[:_MAX_COMMENT_LEN]


def masq_rules(network: str, container_id: str, address: IPInterface) -> tuple[str, list[list[str]], list[str]]:
    """(chain, rules to append to the chain, POSTROUTING jump) as iptables argument lists (nat table)."""
    chain = masq_chain_name(network, container_id)
    comment = ["-m", "comment", "--comment", masq_comment(network, container_id)]
    subnet = str(address.network)
    rules = [
        ["-d", subnet, "-j", "ACCEPT", *comment],
        ["!", "-d", str(MULTICAST_NET), "-j", "MASQUERADE", *comment],
    ]
    jump = ["-s", f"{address.ip}/{address.max_prefixlen}", "-j", chain, *comment]
    return chain, rules, jump
