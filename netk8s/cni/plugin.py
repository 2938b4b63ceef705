"""netk8s-cni: the bridge + host-local CNI plugin, kernel side (rtnetlink, iptables).

The plugin treats the network namespace of the *calling thread* as the host
side. In netk8s that is a node's namespace, never the machine's root
namespace: the executable is started as ``nsenter --net=<node> -- netk8s-cni``
and the in-process path calls :func:`execute` inside
``netk8s.kernel.netns.entered(node)``. The node side is a netlink socket this
thread opens (hence in the node namespace), the pod side one opened while the
thread is briefly inside CNI_NETNS.

ADD: bridge (created up with a fixed MAC and the mtu, optional promisc) with
the gateway address and ``ip_forward`` when isGateway; host-local lease; a
veth pair created in one request, its host end ("veth" + 8 hex) up and
enslaved to the bridge (hairpin per hairpinMode), its other end created
directly inside CNI_NETNS as CNI_IFNAME, then given the address, up, and the
routes in one batch; optional ipMasq chain like the reference plugin. Any
failure undoes what this ADD did. DEL is idempotent. CHECK compares the kernel
with prevResult. GC and STATUS (CNI 1.1) work on the lease directory.

Every ADD re-reads the bridge, its addresses and ``ip_forward`` (three reads,
well under a millisecond) instead of trusting a cache, so a deleted or
changed cni0 is repaired by the next ADD.

Every failure leaves as ``CNIError`` (code + one-line message). The module
imports only what every call needs (no pyroute2, subprocess or logging up
front): the ``netk8s-cni`` executable loads it on each call.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from netk8s.cni import lazylog, rtnl
from netk8s.cni.ipam import Allocation, HostLocalIpam
from netk8s.cni.rtnl import Link, NetlinkError, Rtnl
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

if TYPE_CHECKING:
    import subprocess

log = lazylog.get_logger(__name__)

HOST_VETH_PREFIX = "veth"
_VETH_NAME_ATTEMPTS = 8
_IPTABLES_TIMEOUT = 30.0
_IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
_OPERSTATE_POLL: tuple[float, ...] = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_BRIDGE_POLL: tuple[float, ...] = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)  # seconds, like the above
_SIOCETHTOOL = 0x8946
_ETHTOOL_GLINK = 0x0000000A
_IFREQ_SIZE = 40


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
    """Turn netlink/namespace failures into a one-line CNIError (netlink errors name their request)."""
    try:
        yield
    except NetlinkError as exc:
        raise CNIError(ErrorCode.INTERNAL, str(exc)) from None
    except KernelError as exc:
        raise CNIError(ErrorCode.INTERNAL, f"cannot {what}: {exc}") from None


def _ipam(conf: NetConf) -> HostLocalIpam:
    return HostLocalIpam(conf.name, conf.ipam.data_dir, conf.ipam.range_sets)


def _require_netns(path: str) -> None:
    if not os.path.exists(path):
        raise CNIError(ErrorCode.UNKNOWN_CONTAINER,
                       f"CNI_NETNS: network namespace {path} does not exist; create the pod namespace first")


def _open_in(path: str) -> Rtnl:
    """A netlink socket bound to the namespace at ``path`` (the thread enters it just to open the socket)."""
    with netns.entered(path):
        return Rtnl()


def _netlink_reason(reply: rtnl.Reply) -> str:
    return os.strerror(reply.error) + (f" ({reply.detail})" if reply.detail else "")


def _run_undo(undo: Sequence[Callable[[], object]]) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception as exc:  # keep undoing; the original error is what the caller reports
            log.warning("netk8s-cni: undo step failed: %s", exc)


# --------------------------------------------------------------------------- host side


def _ensure_bridge(host: Rtnl, conf: NetConf) -> Link:
    """The bridge; created (up, fixed MAC, mtu) when missing, else set up (and promisc if asked) if it is not."""
    link = host.link(conf.bridge)
    if link is None:
        try:
            # A bridge otherwise takes the lowest MAC of its ports, so its MAC would change as
            # pods come and go; creating it with a MAC pins it (addr_assign_type "set").
            host.one(rtnl.new_bridge(conf.bridge, conf.mtu, rtnl.random_mac()))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # EEXIST: a concurrent ADD created it in between
                raise CNIError(ErrorCode.INTERNAL, f"bridge: cannot create {conf.bridge}: "
                                                   f"{os.strerror(exc.code)}") from None
        link = host.link(conf.bridge)
        if link is None:
            raise CNIError(ErrorCode.INTERNAL, f"bridge: {conf.bridge} vanished right after it was created")
    if link.kind != "bridge":
        raise CNIError(ErrorCode.INVALID_NETWORK_CONFIG,
                       f"bridge: {conf.bridge} exists and is a {link.kind or 'non-bridge'} device; "
                       "name a bridge or a free name")
    wanted = rtnl.IFF_UP | (rtnl.IFF_PROMISC if conf.promisc_mode else 0)
    if link.flags & wanted != wanted:
        host.one(rtnl.set_flags(link.ifindex, wanted, wanted, f"set bridge {conf.bridge} up"))
    return link


def _ensure_gateway(host: Rtnl, bridge: Link, conf: NetConf, allocations: Sequence[Allocation]) -> None:
    """Give the bridge each gateway address (subnet prefix); refuse a different address in that subnet."""
    present = [(a.address, a.prefixlen) for a in host.addresses(index=bridge.ifindex)]
    for alloc in allocations:
        gw = alloc.gateway
        if gw is None:
            continue
        net = alloc.address.network
        if (str(gw), net.prefixlen) in present:
            continue
        for addr, plen in present:
            if plen == net.prefixlen and _in(addr, net):
                raise CNIError(ErrorCode.INVALID_NETWORK_CONFIG,
                               f"isGateway: bridge {conf.bridge} already has {addr}/{plen}, not the gateway "
                               f"{gw}/{net.prefixlen}; remove that address or set ipam gateway to it")
        broadcast = str(net.broadcast_address) if net.version == 4 else None
        reply = host.call([rtnl.new_addr(bridge.ifindex, str(gw), net.prefixlen, broadcast, conf.bridge)],
                          check=False)[0]
        if reply.error and reply.error != errno.EEXIST:  # EEXIST: a concurrent ADD added it first
            raise CNIError(ErrorCode.INTERNAL, f"cannot add gateway {gw}/{net.prefixlen} to {conf.bridge}: "
                                               f"{_netlink_reason(reply)}")


def _in(addr: str, net: IPNetwork) -> bool:
    return ipaddress.ip_address(addr) in net


def _enable_forwarding() -> None:
    # net.* sysctls resolve against the network namespace of the calling thread,
    # so this is the host (node) namespace's switch. os-level calls: this runs on every ADD.
    try:
        fd = os.open(_IP_FORWARD, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.read(fd, 8).strip() != b"1":
                os.pwrite(fd, b"1", 0)  # at offset 0: numeric sysctls ignore writes elsewhere
        finally:
            os.close(fd)
    except OSError as exc:
        raise CNIError(ErrorCode.INTERNAL, f"isGateway: cannot enable net.ipv4.ip_forward: {exc.strerror}") from None


def _create_veth(host: Rtnl, env: CniEnv, mtu: int, bridge: Link) -> Link:
    """The pair in one request (host end up on the bridge, peer made inside CNI_NETNS); returns the host end."""
    fd = os.open(env.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for _ in range(_VETH_NAME_ATTEMPTS):
            name = _host_veth_name()
            # The lookup rides in the same datagram; it answers after the creation was handled.
            created, found = host.call([rtnl.new_veth(name, env.ifname, mtu, fd, bridge.ifindex),
                                        rtnl.get_link(name)], check=False)
            if created.error == errno.EEXIST and not found.error:
                continue  # host-side name taken by another device: draw another
            if created.error == errno.EEXIST:
                raise _ifname_exists(env)
            if created.error:
                raise CNIError(ErrorCode.INTERNAL, f"cannot create veth pair {name}/{env.ifname}: "
                                                   f"{_netlink_reason(created)}")
            if found.error or not found.messages:
                raise CNIError(ErrorCode.INTERNAL, f"veth {name} vanished right after it was created")
            return rtnl.decode_link(found.messages[0][1])
    finally:
        os.close(fd)
    raise CNIError(ErrorCode.INTERNAL, f"no free host veth name after {_VETH_NAME_ATTEMPTS} attempts")


def _host_veth_name() -> str:
    """"veth" + 8 random hex digits, like the reference plugin's host-side names."""
    return HOST_VETH_PREFIX + os.urandom(4).hex()


def _ifname_exists(env: CniEnv) -> CNIError:
    return CNIError(ErrorCode.INVALID_NETWORK_CONFIG,
                    f"CNI_IFNAME: container veth name provided ({env.ifname}) already exists in {env.netns}; "
                    "DEL the attachment first or pick another CNI_IFNAME")


def _drop_host_veth(index: int, name: str) -> None:
    """Undo step: delete the host end (the peer goes with it), in the calling thread's namespace."""
    with Rtnl() as host:
        _delete_link(host, index, name)


def _delete_link(host: Rtnl, index: int, name: str) -> None:
    """Delete a link; one already gone (ENODEV) counts as deleted."""
    reply = host.call([rtnl.del_link(index, name)], check=False)[0]
    if reply.error and reply.error != errno.ENODEV:
        raise NetlinkError(reply.error, f"delete link {name}", reply.detail)


def _sync_link_state(name: str) -> bool | None:
    """Have the kernel apply a pending carrier change of ``name`` (calling thread's namespace) now;
    returns the carrier state, None if the kernel refused the request.

    Carrier changes are applied by the kernel's linkwatch work, which handles a
    bridge's (not urgent) at most once a second: a new bridge that just got its
    first port can drop what it sends (its qdisc is not active yet) for up to a
    second. ETHTOOL_GLINK makes the kernel run the pending event for that
    device synchronously (ethtool_op_get_link -> linkwatch_sync_dev).
    """
    import _socket
    import ctypes
    import fcntl
    import struct

    value = ctypes.create_string_buffer(struct.pack("=II", _ETHTOOL_GLINK, 0), 8)
    request = struct.pack("16sP", name.encode(), ctypes.addressof(value)).ljust(_IFREQ_SIZE, b"\0")
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, request)
    except OSError as exc:  # only a speed-up: the caller's poll still waits for the change
        log.debug("ETHTOOL_GLINK on %s failed: %s", name, exc)
        return None
    finally:
        sock.close()
    return bool(struct.unpack("=II", value.raw[:8])[1])


def _wait_until_up(host: Rtnl, pod: Rtnl, veth: str, env: CniEnv, bridge: Link) -> None:
    """Return once both veth ends (and a bridge that just got its first port) are operationally up.

    Right after ADD the kernel may not yet have applied the new carrier states
    (its linkwatch work runs asynchronously): until it has, the bridge port is
    disabled and a device's qdisc drops what is sent, which loses e.g. the
    pod's first ARP request. Operstate changes in the same step, so polling it
    tells when the pod is reachable; usually it is already up. The reference
    bridge plugin polls the host end the same way, and fails the ADD if it
    stays down; so does this. A bridge that was down before this ADD gets a
    synchronous nudge and a short poll, and only a warning if it stays down
    (e.g. a user's bridge with STP, whose ports take seconds to forward).
    """
    import time

    checks = [(host, veth, "host", _OPERSTATE_POLL), (pod, env.ifname, env.netns, _OPERSTATE_POLL)]
    if bridge.operstate != rtnl.IF_OPER_UP:
        checks.append((host, bridge.name, "host", _BRIDGE_POLL))
    for sock, name, where, schedule in checks:
        state = 0
        for attempt, delay in enumerate(schedule):
            if delay:
                time.sleep(delay)
            link = sock.link(name)
            if link is None:
                raise CNIError(ErrorCode.INTERNAL, f"{name} ({where}) vanished while the pod was being set up")
            state = link.operstate
            if state == rtnl.IF_OPER_UP:
                break
            if attempt == 0 and sock is host:
                _sync_link_state(name)
        else:
            if name == bridge.name:
                log.warning("bridge %s is not up after %.2fs (operstate %d); pods may not reach it yet", name,
                            sum(schedule), state)
            else:
                raise CNIError(ErrorCode.INTERNAL, f"veth {name} ({where}) is not up after {sum(schedule):.1f}s "
                                                   f"(operstate {state})")


# --------------------------------------------------------------------------- container side


def _configure_container(pod: Rtnl, env: CniEnv, allocations: Sequence[Allocation],
                         routes: Sequence[Route]) -> str:
    """Addresses, up, loopback up and routes in one batch; returns the interface's MAC."""
    link = pod.link(env.ifname)
    if link is None:
        raise CNIError(ErrorCode.INTERNAL, f"container interface {env.ifname} did not appear in {env.netns}")
    setup: list[rtnl.Request] = []
    for alloc in allocations:
        net = alloc.address.network
        broadcast = str(net.broadcast_address) if alloc.address.version == 4 else None
        setup.append(rtnl.new_addr(link.ifindex, str(alloc.address.ip), net.prefixlen, broadcast, env.ifname))
    setup.append(rtnl.set_up(link.ifindex, env.ifname))
    setup.append(rtnl.set_up(rtnl.LOOPBACK_IFINDEX, "lo"))
    default_gw = next((a.gateway for a in allocations if a.gateway is not None), None)
    gateways: list[str | None] = []
    for route in routes:
        gw = route.gw if route.gw is not None else default_gw
        gateways.append(str(gw) if gw is not None else None)
        setup.append(rtnl.new_route(str(route.dst.network_address), route.dst.prefixlen, gateways[-1], link.ifindex,
                                    env.ifname))
    # One datagram; the kernel handles the requests in order (link up before the routes that need it).
    replies = pod.call(setup, check=False)
    first_route = len(setup) - len(routes)
    for request, reply in zip(setup[:first_route], replies):
        if reply.error:
            raise CNIError(ErrorCode.INTERNAL, f"cannot configure {env.ifname} in {env.netns}: "
                                               f"{request.what}: {_netlink_reason(reply)}")
    for route, via, reply in zip(routes, gateways, replies[first_route:]):
        if reply.error == errno.EEXIST:  # e.g. an ipam route equal to the connected subnet route
            log.debug("route %s already present in %s", route.dst, env.netns)
        elif reply.error:
            raise CNIError(ErrorCode.INTERNAL, f"cannot add route {route.dst} via {via} dev {env.ifname} in "
                                               f"{env.netns}: {_netlink_reason(reply)}")
    return link.mac


# --------------------------------------------------------------------------- ipMasq (iptables, nat table)


def _iptables(args: Sequence[str], check: bool = True) -> "subprocess.CompletedProcess[str]":
    # A child process starts in the calling thread's network namespace, so this
    # edits the host (node) namespace's tables, also on the in-process path.
    import subprocess

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
    import shlex

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
    with _kernel(f"open network namespace {env.netns}"):
        pod = _open_in(env.netns)
    with pod:
        with _kernel(f"inspect {env.netns}"):
            if pod.link(env.ifname) is not None:
                raise _ifname_exists(env)
        ipam = _ipam(conf)
        allocations = ipam.allocate(env.container_id, env.ifname)
        undo: list[Callable[[], object]] = []
        new_ips = [a.address.ip for a in allocations if a.new]
        if new_ips:
            undo.append(lambda: ipam.release(env.container_id, env.ifname, only=new_ips))
        try:
            with _kernel("set up the host side"), Rtnl() as host:
                bridge = _ensure_bridge(host, conf)
                if conf.is_gateway:
                    _ensure_gateway(host, bridge, conf, allocations)
                    _enable_forwarding()
                veth = _create_veth(host, env, conf.mtu, bridge)
                undo.append(lambda: _drop_host_veth(veth.ifindex, veth.name))
                if conf.hairpin_mode:
                    host.one(rtnl.set_hairpin(veth.ifindex, veth.name))
                routes = result_routes(conf, [a.gateway for a in allocations])
                with _kernel(f"configure {env.ifname} in {env.netns}"):
                    container_mac = _configure_container(pod, env, allocations, routes)
                _wait_until_up(host, pod, veth.name, env, bridge)
            if conf.ip_masq:
                undo.append(lambda: teardown_masq(conf.name, env.container_id))
                for alloc in allocations:
                    setup_masq(conf.name, env.container_id, alloc.address)
        except BaseException:
            _run_undo(undo)
            raise
    result = Result(
        cni_version=conf.cni_version,
        interfaces=(Interface(name=conf.bridge, mac=bridge.mac), Interface(name=veth.name, mac=veth.mac),
                    Interface(name=env.ifname, mac=container_mac, sandbox=env.netns)),
        ips=tuple(IpConfig(address=a.address, gateway=a.gateway, interface=2) for a in allocations),
        routes=routes, dns=conf.dns)
    log.info("netk8s-cni ADD %s/%s: %s on %s", env.container_id, env.ifname,
             ",".join(str(a.address) for a in allocations), veth.name)
    return result.to_json()


def cmd_del(env: CniEnv, conf: NetConf) -> None:
    _ipam(conf).release(env.container_id, env.ifname)
    if env.netns and os.path.exists(env.netns):
        try:
            pod: Rtnl | None = _open_in(env.netns)
        except KernelError as exc:  # a stale path that is no namespace any more: nothing left to delete there
            log.warning("DEL %s: cannot enter %s (%s); skipping the container side", env.container_id, env.netns,
                        exc)
            pod = None
        if pod is not None:
            with pod:
                reply = pod.call([rtnl.del_link_by_name(env.ifname)], check=False)[0]
            if reply.error and reply.error != errno.ENODEV:
                raise CNIError(ErrorCode.INTERNAL, f"cannot delete {env.ifname} in {env.netns}: "
                                                   f"{_netlink_reason(reply)}")
    if conf.prev_result is not None:
        # If the pod namespace is gone from its path but still alive, its veth survives; drop
        # the host end named in prevResult (a random veth name, only if it sits on our bridge).
        with _kernel("remove the host veth"), Rtnl() as host:
            bridge = host.link(conf.bridge)
            for iface in conf.prev_result.interfaces:
                if iface.sandbox or not iface.name.startswith(HOST_VETH_PREFIX):
                    continue
                link = host.link(iface.name)
                if link is not None and bridge is not None and link.master == bridge.ifindex and link.kind == "veth":
                    _delete_link(host, link.ifindex, link.name)
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
    with _kernel(f"inspect network namespace {env.netns}"):
        with _open_in(env.netns) as pod:
            link = pod.link(env.ifname)
            if link is None:
                raise _check_failed(f"interface {env.ifname} is missing in {env.netns}")
            if expected.mac and link.mac.lower() != expected.mac.lower():
                raise _check_failed(f"interface {env.ifname} has MAC {link.mac}, prevResult says {expected.mac}")
            present = {(a.address, a.prefixlen) for a in pod.addresses(index=link.ifindex)}
            kernel_routes = [(r.dst, r.dst_len, r.gateway) for r in pod.routes()]
    for ipc in expected_ips:
        if (str(ipc.address.ip), ipc.address.network.prefixlen) not in present:
            raise _check_failed(f"address {ipc.address} is missing on {env.ifname} in {env.netns}")
    for route in prev.routes:
        want = (str(route.dst.network_address), route.dst.prefixlen)
        if not any((dst, plen) == want and (route.gw is None or gw == str(route.gw))
                   for dst, plen, gw in kernel_routes):
            via = f" via {route.gw}" if route.gw is not None else ""
            raise _check_failed(f"route {route.dst}{via} is missing in {env.netns}")
    with _kernel("inspect the host side"), Rtnl() as host:
        bridge = host.link(conf.bridge)
        if bridge is None:
            raise _check_failed(f"bridge {conf.bridge} is missing in the host namespace")
        for iface in prev.interfaces:
            if iface.sandbox or iface.name == conf.bridge:
                continue
            host_link = host.link(iface.name)
            if host_link is None:
                raise _check_failed(f"host veth {iface.name} is missing")
            if host_link.master != bridge.ifindex:
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
