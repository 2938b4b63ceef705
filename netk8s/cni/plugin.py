"""netk8s-cni: the bridge + host-local CNI plugin, kernel side (pyroute2, iptables).

The plugin treats the network namespace of the *calling thread* as the host
side. In netk8s that is a node's namespace, never the machine's root
namespace: the executable is started as ``nsenter --net=<node> -- netk8s-cni``
and the in-process path calls :func:`execute` inside
``netk8s.kernel.netns.entered(node)``. The node side is opened with
``netns.iproute(None)`` (a netlink socket made by this thread, hence in the
node namespace), the pod side with ``netns.iproute(CNI_NETNS)``.

ADD: bridge (created, MAC pinned, mtu, up, optional promisc) with the gateway
address and ``ip_forward`` when isGateway; host-local lease; a veth pair whose
host end ("veth" + 8 hex) is enslaved to the bridge (hairpin per hairpinMode)
and whose other end is created directly inside CNI_NETNS as CNI_IFNAME with the
address, mtu and routes; optional ipMasq chain like the reference plugin. Any
failure undoes what this ADD did. DEL is idempotent. CHECK compares the kernel
with prevResult. GC and STATUS (CNI 1.1) work on the lease directory.

Every failure leaves as ``CNIError`` (code + one-line message).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import shlex
import socket
import subprocess
from typing import Any, Callable, Iterator, Mapping, Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netk8s.cni.ipam import Allocation, HostLocalIpam
from netk8s.cni.types import (
    CniEnv,
    CNIError,
    Command,
    ErrorCode,
    Interface,
    IpConfig,
    IPInterface,
    IPNetwork,
    NetConf,
    Result,
    Route,
    masq_chain_name,
    masq_rules,
    parse_command,
    parse_config,
    parse_env,
    result_routes,
    version_json,
)
from netk8s.errors import KernelError
from netk8s.kernel import netns

log = logging.getLogger(__name__)

IFF_PROMISC = 0x100
MAIN_TABLE = 254
HOST_VETH_PREFIX = "veth"
_VETH_NAME_ATTEMPTS = 8
_IPTABLES_TIMEOUT = 30.0
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


# --------------------------------------------------------------------------- entry point


def execute(environ: Mapping[str, str], stdin: bytes | str) -> dict[str, Any] | None:
    """Run one CNI command in the calling thread's network namespace (the host side).

    Returns the JSON answer (ADD, VERSION) or None; raises CNIError. The
    environment is validated first, then the configuration; the kernel is only
    touched after both passed.
    """
    command = parse_command(environ)
    if command is Command.VERSION:
        return version_json()
    env = parse_env(environ)
    conf = parse_config(stdin, command)
    handler = _HANDLERS[command]
    try:
        return handler(env, conf)
    except CNIError:
        raise
    except Exception as exc:  # a bug or an unexpected kernel answer: still report it the CNI way
        log.exception("netk8s-cni %s failed", command.value)
        raise CNIError(ErrorCode.INTERNAL, f"{command.value} failed unexpectedly: {exc}") from exc


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _kernel(what: str) -> Iterator[None]:
    """Turn netlink/namespace failures into a one-line CNIError naming the operation."""
    try:
        yield
    except NetlinkError as exc:
        raise CNIError(ErrorCode.INTERNAL, f"cannot {what}: {os.strerror(exc.code)}") from None
    except KernelError as exc:
        raise CNIError(ErrorCode.INTERNAL, f"cannot {what}: {exc}") from None


def _ipam(conf: NetConf) -> HostLocalIpam:
    return HostLocalIpam(conf.name, conf.ipam.data_dir, conf.ipam.range_sets)


def _require_netns(path: str) -> None:
    if not os.path.exists(path):
        raise CNIError(ErrorCode.UNKNOWN_CONTAINER,
                       f"CNI_NETNS: network namespace {path} does not exist; create the pod namespace first")


def _link_kind(link: Any) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def _run_undo(undo: Sequence[Callable[[], object]]) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception as exc:  # keep undoing; the original error is what the caller reports
            log.warning("netk8s-cni: undo step failed: %s", exc)


# --------------------------------------------------------------------------- host side


def _ensure_bridge(ipr: IPRoute, conf: NetConf) -> int:
    """The bridge's index; created (MAC pinned, mtu) when missing, then up (and promisc if asked)."""
    found = ipr.link_lookup(ifname=conf.bridge)
    if not found:
        created = True
        try:
            ipr.link("add", ifname=conf.bridge, kind="bridge", mtu=conf.mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise CNIError(ErrorCode.INTERNAL,
                               f"bridge: cannot create {conf.bridge}: {os.strerror(exc.code)}") from None
            created = False  # a concurrent ADD created it in between
        found = ipr.link_lookup(ifname=conf.bridge)
        if not found:
            raise CNIError(ErrorCode.INTERNAL, f"bridge: {conf.bridge} vanished right after it was created")
        if created:
            # A bridge otherwise takes the lowest MAC of its ports, so its MAC would change as
            # pods come and go; setting it explicitly pins it (addr_assign_type becomes "set").
            mac = ipr.get_links(found[0])[0].get("IFLA_ADDRESS")
            with _kernel(f"pin the MAC of bridge {conf.bridge}"):
                ipr.link("set", index=found[0], address=mac)
    index = found[0]
    link = ipr.get_links(index)[0]
    if _link_kind(link) != "bridge":
        raise CNIError(ErrorCode.INVALID_NETWORK_CONFIG,
                       f"bridge: {conf.bridge} exists and is a {_link_kind(link) or 'non-bridge'} device; "
                       "name a bridge or a free name")
    with _kernel(f"set bridge {conf.bridge} up"):
        if conf.promisc_mode:
            ipr.link("set", index=index, flags=IFF_PROMISC, change=IFF_PROMISC)
        ipr.link("set", index=index, state="up")
    return index


def _ensure_gateway(ipr: IPRoute, bridge: int, conf: NetConf, allocations: Sequence[Allocation]) -> None:
    """Give the bridge each gateway address (subnet prefix); refuse a different address in that subnet."""
    present = [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=bridge, family=socket.AF_INET)]
    for alloc in allocations:
        gw = alloc.gateway
        if gw is None:
            continue
        net = alloc.address.network
        if (str(gw), net.prefixlen) in present:
            continue
        for addr, plen in present:
            if addr is not None and plen == net.prefixlen and _in(addr, net):
                raise CNIError(ErrorCode.INVALID_NETWORK_CONFIG,
                               f"isGateway: bridge {conf.bridge} already has {addr}/{plen}, not the gateway "
                               f"{gw}/{net.prefixlen}; remove that address or set ipam gateway to it")
        try:
            ipr.addr("add", index=bridge, address=str(gw), prefixlen=net.prefixlen,
                     broadcast=str(net.broadcast_address))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # EEXIST: a concurrent ADD added it first
                raise CNIError(ErrorCode.INTERNAL,
                               f"cannot add gateway {gw}/{net.prefixlen} to {conf.bridge}: "
                               f"{os.strerror(exc.code)}") from None


def _in(addr: str, net: IPNetwork) -> bool:
    return ipaddress.ip_address(addr) in net


def _enable_forwarding() -> None:
    # net.* sysctls resolve against the network namespace of the calling thread,
    # so this is the host (node) namespace's switch.
    try:
        with open(_IP_FORWARD) as f:
            if f.read().strip() == "1":
                return
        with open(_IP_FORWARD, "w") as f:
            f.write("1")
    except OSError as exc:
        raise CNIError(ErrorCode.INTERNAL, f"isGateway: cannot enable net.ipv4.ip_forward: {exc.strerror}") from None


def _create_veth(ipr: IPRoute, env: CniEnv, mtu: int) -> tuple[str, int]:
    """Make the pair in one netlink call: host end here, peer directly in CNI_NETNS as CNI_IFNAME."""
    fd = os.open(env.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for _ in range(_VETH_NAME_ATTEMPTS):
            name = HOST_VETH_PREFIX + secrets.token_hex(4)
            try:
                ipr.link("add", ifname=name, kind="veth", mtu=mtu,
                         peer={"ifname": env.ifname, "mtu": mtu, "net_ns_fd": fd})
            except NetlinkError as exc:
                if exc.code == errno.EEXIST and ipr.link_lookup(ifname=name):
                    continue  # host-side name taken: draw another
                if exc.code == errno.EEXIST:
                    raise _ifname_exists(env) from None
                raise CNIError(ErrorCode.INTERNAL,
                               f"cannot create veth pair {name}/{env.ifname}: {os.strerror(exc.code)}") from None
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise CNIError(ErrorCode.INTERNAL, f"veth {name} vanished right after it was created")
            return name, found[0]
    finally:
        os.close(fd)
    raise CNIError(ErrorCode.INTERNAL, f"no free host veth name after {_VETH_NAME_ATTEMPTS} attempts")


def _ifname_exists(env: CniEnv) -> CNIError:
    return CNIError(ErrorCode.INVALID_NETWORK_CONFIG,
                    f"CNI_IFNAME: container veth name provided ({env.ifname}) already exists in {env.netns}; "
                    "DEL the attachment first or pick another CNI_IFNAME")


def _attach_host_side(ipr: IPRoute, index: int, bridge: int, conf: NetConf, name: str) -> None:
    with _kernel(f"enslave {name} to {conf.bridge}"):
        ipr.link("set", index=index, master=bridge)
        ipr.link("set", index=index, state="up")
        if conf.hairpin_mode:
            # IFLA_BRPORT_MODE is the hairpin flag; pyroute2 0.9.7 ignores hairpin_mode=.
            ipr.brport("set", index=index, mode=1)


def _delete_link(ipr: IPRoute, name: str) -> None:
    for index in ipr.link_lookup(ifname=name):
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise


# --------------------------------------------------------------------------- container side


def _configure_container(ipr: IPRoute, env: CniEnv, allocations: Sequence[Allocation],
                         routes: Sequence[Route]) -> str:
    """Addresses, up, loopback up, routes; returns the interface's MAC."""
    found = ipr.link_lookup(ifname=env.ifname)
    if not found:
        raise CNIError(ErrorCode.INTERNAL, f"container interface {env.ifname} did not appear in {env.netns}")
    index = found[0]
    with _kernel(f"configure {env.ifname} in {env.netns}"):
        for alloc in allocations:
            extra = {"broadcast": str(alloc.address.network.broadcast_address)} if alloc.address.version == 4 else {}
            ipr.addr("add", index=index, address=str(alloc.address.ip), prefixlen=alloc.address.network.prefixlen,
                     **extra)
        ipr.link("set", index=index, state="up")
        for lo in ipr.link_lookup(ifname="lo"):
            ipr.link("set", index=lo, state="up")
    default_gw = next((a.gateway for a in allocations if a.gateway is not None), None)
    for route in routes:
        gw = route.gw if route.gw is not None else default_gw
        spec: dict[str, Any] = {"dst": str(route.dst), "oif": index}
        if gw is not None:
            spec["gateway"] = str(gw)
        try:
            ipr.route("add", **spec)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:  # e.g. an ipam route equal to the connected subnet route
                log.debug("route %s already present in %s", route.dst, env.netns)
                continue
            raise CNIError(ErrorCode.INTERNAL, f"cannot add route {route.dst} via {gw} dev {env.ifname} in "
                                               f"{env.netns}: {os.strerror(exc.code)}") from None
    return ipr.get_links(index)[0].get("IFLA_ADDRESS") or ""


# --------------------------------------------------------------------------- ipMasq (iptables, nat table)


def _iptables(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    # A child process starts in the calling thread's network namespace, so this
    # edits the host (node) namespace's tables, also on the in-process path.
    argv = ["iptables", "-w", "10", "-t", "nat", *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_IPTABLES_TIMEOUT)
    except FileNotFoundError:
        raise CNIError(ErrorCode.INTERNAL, "ipMasq: iptables is not installed; install it or set ipMasq false") \
            from None
    except subprocess.TimeoutExpired:
        raise CNIError(ErrorCode.TRY_AGAIN_LATER,
                       f"ipMasq: iptables {' '.join(args)} timed out after {_IPTABLES_TIMEOUT}s") from None
    if check and result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise CNIError(ErrorCode.INTERNAL,
                       f"ipMasq: iptables -t nat {' '.join(args)} failed: {lines[0] if lines else result.returncode}")
    return result


def _chain_exists(chain: str) -> bool:
    return _iptables(["-S", chain], check=False).returncode == 0


def setup_masq(network: str, container_id: str, address: IPInterface) -> None:
    """Chain CNI-<hash>: ACCEPT to the pod subnet, MASQUERADE the rest but multicast; jump from POSTROUTING."""
    chain, rules, jump = masq_rules(network, container_id, address)
    if not _chain_exists(chain):
        _iptables(["-N", chain])
    for rule in rules:
        if _iptables(["-C", chain, *rule], check=False).returncode != 0:
            _iptables(["-A", chain, *rule])
    if _iptables(["-C", "POSTROUTING", *jump], check=False).returncode != 0:
        _iptables(["-A", "POSTROUTING", *jump])


def teardown_masq(network: str, container_id: str) -> None:
    """Remove every POSTROUTING jump to the container's chain, then the chain; no-op when absent."""
    chain = masq_chain_name(network, container_id)
    try:
        listing = _iptables(["-S", "POSTROUTING"], check=False)
    except CNIError as exc:
        log.warning("ipMasq teardown skipped: %s", exc)
        return
    for line in listing.stdout.splitlines():
        parts = shlex.split(line)
        if parts[:2] == ["-A", "POSTROUTING"] and "-j" in parts and parts[parts.index("-j") + 1:][:1] == [chain]:
            _iptables(["-D", "POSTROUTING", *parts[2:]])
    if _chain_exists(chain):
        _iptables(["-F", chain])
        _iptables(["-X", chain])


def _masq_present(network: str, container_id: str, address: IPInterface) -> bool:
    chain, rules, jump = masq_rules(network, container_id, address)
    if not _chain_exists(chain):
        return False
    checks = [["-C", chain, *rule] for rule in rules] + [["-C", "POSTROUTING", *jump]]
    return all(_iptables(c, check=False).returncode == 0 for c in checks)


# --------------------------------------------------------------------------- commands


def cmd_add(env: CniEnv, conf: NetConf) -> dict[str, Any]:
    _require_netns(env.netns)
    with _kernel(f"open network namespace {env.netns}"), netns.iproute(env.netns) as cipr:
        if cipr.link_lookup(ifname=env.ifname):
            raise _ifname_exists(env)
    ipam = _ipam(conf)
    allocations = ipam.allocate(env.container_id, env.ifname)
    undo: list[Callable[[], object]] = []
    new_ips = [a.address.ip for a in allocations if a.new]
    if new_ips:
        undo.append(lambda: ipam.release(env.container_id, env.ifname, only=new_ips))
    try:
        with netns.iproute(None) as hipr:
            bridge = _ensure_bridge(hipr, conf)
            if conf.is_gateway:
                _ensure_gateway(hipr, bridge, conf, allocations)
                _enable_forwarding()
            host_name, host_index = _create_veth(hipr, env, conf.mtu)

            def drop_veth(name: str = host_name) -> None:
                with netns.iproute(None) as ipr:  # deleting one end removes both
                    _delete_link(ipr, name)

            undo.append(drop_veth)
            _attach_host_side(hipr, host_index, bridge, conf, host_name)
            bridge_mac = hipr.get_links(bridge)[0].get("IFLA_ADDRESS") or ""
            host_mac = hipr.get_links(host_index)[0].get("IFLA_ADDRESS") or ""
        routes = result_routes(conf, [a.gateway for a in allocations])
        with _kernel(f"open network namespace {env.netns}"), netns.iproute(env.netns) as cipr:
            container_mac = _configure_container(cipr, env, allocations, routes)
        if conf.ip_masq:
            undo.append(lambda: teardown_masq(conf.name, env.container_id))
            for alloc in allocations:
                setup_masq(conf.name, env.container_id, alloc.address)
    except BaseException:
        _run_undo(undo)
        raise
    result = Result(
        cni_version=conf.cni_version,
        interfaces=(Interface(name=conf.bridge, mac=bridge_mac), Interface(name=host_name, mac=host_mac),
                    Interface(name=env.ifname, mac=container_mac, sandbox=env.netns)),
        ips=tuple(IpConfig(address=a.address, gateway=a.gateway, interface=2) for a in allocations),
        routes=routes, dns=conf.dns)
    log.info("netk8s-cni ADD %s/%s: %s on %s", env.container_id, env.ifname,
             ",".join(str(a.address) for a in allocations), host_name)
    return result.to_json()


def cmd_del(env: CniEnv, conf: NetConf) -> None:
    _ipam(conf).release(env.container_id, env.ifname)
    if env.netns and os.path.exists(env.netns):
        try:
            with netns.iproute(env.netns) as cipr:
                _delete_link(cipr, env.ifname)
        except KernelError as exc:  # a stale path that is no namespace any more: nothing left to delete there
            log.warning("DEL %s: cannot enter %s (%s); skipping the container side", env.container_id, env.netns,
                        exc)
    if conf.prev_result is not None:
        # If the pod namespace is gone from its path but still alive, its veth survives; drop
        # the host end named in prevResult (a random veth name, only if it sits on our bridge).
        with _kernel("remove the host veth"), netns.iproute(None) as hipr:
            bridges = hipr.link_lookup(ifname=conf.bridge)
            for iface in conf.prev_result.interfaces:
                if iface.sandbox or not iface.name.startswith(HOST_VETH_PREFIX):
                    continue
                for index in hipr.link_lookup(ifname=iface.name):
                    link = hipr.get_links(index)[0]
                    if bridges and link.get("IFLA_MASTER") == bridges[0] and _link_kind(link) == "veth":
                        _delete_link(hipr, iface.name)
    if conf.ip_masq:
        teardown_masq(conf.name, env.container_id)
    log.info("netk8s-cni DEL %s/%s done", env.container_id, env.ifname)
    return None


def _check_failed(msg: str) -> CNIError:
    return CNIError(ErrorCode.INTERNAL, f"CHECK: {msg}")


def cmd_check(env: CniEnv, conf: NetConf) -> None:
    prev = conf.prev_result
    assert prev is not None  # parse_config requires it for CHECK
    _require_netns(env.netns)
    sandbox = [i for i, iface in enumerate(prev.interfaces) if iface.name == env.ifname and iface.sandbox]
    if not sandbox:
        raise CNIError(ErrorCode.INVALID_NETWORK_CONFIG,
                       f"prevResult.interfaces: no sandbox interface named {env.ifname}; pass the ADD result")
    expected = prev.interfaces[sandbox[0]]
    expected_ips = [ip for ip in prev.ips if ip.interface == sandbox[0]]
    with _kernel(f"open network namespace {env.netns}"), netns.iproute(env.netns) as cipr:
        found = cipr.link_lookup(ifname=env.ifname)
        if not found:
            raise _check_failed(f"interface {env.ifname} is missing in {env.netns}")
        link = cipr.get_links(found[0])[0]
        mac = link.get("IFLA_ADDRESS") or ""
        if expected.mac and mac.lower() != expected.mac.lower():
            raise _check_failed(f"interface {env.ifname} has MAC {mac}, prevResult says {expected.mac}")
        present = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in cipr.get_addr(index=found[0])}
        for ipc in expected_ips:
            if (str(ipc.address.ip), ipc.address.network.prefixlen) not in present:
                raise _check_failed(f"address {ipc.address} is missing on {env.ifname} in {env.netns}")
        kernel_routes = [(r.get("RTA_DST") or ("0.0.0.0" if r["family"] == socket.AF_INET else "::"),
                          r["dst_len"], r.get("RTA_GATEWAY"))
                         for r in cipr.get_routes(table=MAIN_TABLE)]
    for route in prev.routes:
        want = (str(route.dst.network_address), route.dst.prefixlen)
        if not any((dst, plen) == want and (route.gw is None or gw == str(route.gw))
                   for dst, plen, gw in kernel_routes):
            via = f" via {route.gw}" if route.gw is not None else ""
            raise _check_failed(f"route {route.dst}{via} is missing in {env.netns}")
    with _kernel("inspect the host side"), netns.iproute(None) as hipr:
        bridges = hipr.link_lookup(ifname=conf.bridge)
        if not bridges:
            raise _check_failed(f"bridge {conf.bridge} is missing in the host namespace")
        for iface in prev.interfaces:
            if iface.sandbox or iface.name == conf.bridge:
                continue
            indexes = hipr.link_lookup(ifname=iface.name)
            if not indexes:
                raise _check_failed(f"host veth {iface.name} is missing")
            if hipr.get_links(indexes[0])[0].get("IFLA_MASTER") != bridges[0]:
                raise _check_failed(f"host veth {iface.name} is not attached to bridge {conf.bridge}")
    leased = {a.address.ip for a in _ipam(conf).get(env.container_id, env.ifname)}
    for ipc in expected_ips:
        if ipc.address.ip not in leased:
            raise _check_failed(f"no host-local reservation of {ipc.address.ip} for {env.container_id}/{env.ifname}")
        if conf.ip_masq and not _masq_present(conf.name, env.container_id, ipc.address):
            raise _check_failed(f"ipMasq rules for {ipc.address.ip} (chain "
                                f"{masq_chain_name(conf.name, env.container_id)}) are missing")
    return None


def cmd_gc(env: CniEnv, conf: NetConf) -> None:
    valid = conf.valid_attachments or frozenset()
    gone = _ipam(conf).gc(valid)
    if conf.ip_masq:
        kept_ids = {cid for cid, _ in valid}
        for cid in sorted({lease.container_id for lease in gone} - kept_ids):
            teardown_masq(conf.name, cid)
    if gone:
        log.info("netk8s-cni GC %s: released %s", conf.name, ", ".join(str(lease.ip) for lease in gone))
    return None


def cmd_status(env: CniEnv, conf: NetConf) -> None:
    _ipam(conf).check_writable()
    return None


_HANDLERS: dict[Command, Callable[[CniEnv, NetConf], dict[str, Any] | None]] = {
    Command.ADD: cmd_add,
    Command.DEL: cmd_del,
    Command.CHECK: cmd_check,
    Command.GC: cmd_gc,
    Command.STATUS: cmd_status,
}
