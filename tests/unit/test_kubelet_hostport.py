"""hostPort rules rendered like the portmap plugin, conflicts, and the manager's restore payloads."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv4Interface

from netk8s.kubelet.hostport import (
    HostportManager,
    PodPortMappings,
    PortMapping,
    Protocol,
    dnat_chain,
    missing_jumps,
    pod_net_of,
    pod_port_mappings,
    render,
)

NET = IPv4Interface("10.244.1.5/24")


def test_chain_name_is_portmaps() -> None:
    expected = "CNI-DN-" + hashlib.sha512(b"netk8sabc123").hexdigest()
    assert dnat_chain("netk8s", "abc123") == expected[:28]
    assert len(dnat_chain("netk8s", "abc123")) == 28


def test_mappings_from_a_pod_spec() -> None:
    pod = {"spec": {"containers": [
        {"ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "hostPort": 53, "protocol": "UDP",
                                                             "hostIP": "172.18.0.3"},
                   {"containerPort": 9000}]}]}}
    assert pod_port_mappings(pod) == [PortMapping(8080, 80), PortMapping(53, 53, Protocol.UDP,
                                                                         IPv4Address("172.18.0.3"))]
    host_net = {"spec": {"hostNetwork": True, "containers": [{"ports": [{"containerPort": 9000}]}]}}
    assert pod_port_mappings(host_net) == [PortMapping(9000, 9000)]


def test_render_matches_iptables_save_form() -> None:
    pod = PodPortMappings("abc", NET, (PortMapping(8080, 80), PortMapping(5353, 53, Protocol.UDP,
                                                                         IPv4Address("172.18.0.3"))))
    chain = dnat_chain("netk8s", "abc")
    text = render("netk8s", [pod], jumps=missing_jumps(""))
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert f":{chain} - [0:0]" in lines
    assert (f'-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"netk8s\\" id: \\"abc\\"" '
            f"-m multiport --dports 8080 -j {chain}") in lines
    assert f"-A {chain} -s 10.244.1.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK" in lines
    assert f"-A {chain} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK" in lines
    assert f"-A {chain} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.1.5:80" in lines
    assert (f"-A {chain} -d 172.18.0.3/32 -p udp -m udp --dport 5353 -j DNAT "
            f"--to-destination 10.244.1.5:53") in lines
    assert ('-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK '
            "--set-xmark 0x2000/0x2000") in lines
    assert "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE" in lines
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT" in lines
    assert "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT" in lines
    assert ('-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ'
            in lines)
    # The masquerade marks come before the DNAT of the same port.
    assert lines.index(f"-A {chain} -s 10.244.1.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK") < \
        lines.index(f"-A {chain} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.1.5:80")


def test_more_than_15_ports_split_the_multiport_rule() -> None:
    pod = PodPortMappings("x", NET, tuple(PortMapping(10000 + i, 80 + i) for i in range(17)))
    entries = [line for line in render("n", [pod]).splitlines() if line.startswith("-A CNI-HOSTPORT-DNAT")]
    assert len(entries) == 2 and "--dports 10015,10016 " in entries[1]


def test_newest_pod_first_and_stale_chains_deleted() -> None:
    old, new = PodPortMappings("old", NET, (PortMapping(1, 1),)), PodPortMappings("new", NET, (PortMapping(2, 2),))
    lines = render("n", [old, new], stale_chains=["CNI-DN-gone"]).splitlines()
    entries = [line for line in lines if line.startswith("-A CNI-HOSTPORT-DNAT")]
    assert dnat_chain("n", "new") in entries[0] and dnat_chain("n", "old") in entries[1]
    assert ":CNI-DN-gone - [0:0]" in lines and lines[-2] == "-X CNI-DN-gone"


def test_missing_jumps_reads_a_dump() -> None:
    dump = ("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n"
            "COMMIT\n")
    assert [j.chain for j in missing_jumps(dump)] == ["OUTPUT", "POSTROUTING"]


def test_conflicts() -> None:
    a, b = PortMapping(80, 80), PortMapping(80, 8080, host_ip=IPv4Address("172.18.0.3"))
    assert a.overlaps(b) and b.overlaps(a)
    assert not PortMapping(80, 80, host_ip=IPv4Address("172.18.0.3")).overlaps(
        PortMapping(80, 80, host_ip=IPv4Address("172.18.0.4")))
    assert not a.overlaps(PortMapping(80, 80, Protocol.UDP))
    applied: list[str] = []
    manager = HostportManager("netk8s", applied.append, lambda: "")
    manager.add("default/a", PodPortMappings("ida", NET, (a,)))
    conflicts = manager.conflicts("default/b", [b])
    assert [(c.mapping, c.holder) for c in conflicts] == [(b, "default/a")]
    assert manager.conflicts("default/a", [a]) == []
    manager.claim("default/h", [PortMapping(9000, 9000)])  # hostNetwork: claimed, no rules
    assert manager.conflicts("default/c", [PortMapping(9000, 1)])
    assert len(applied) == 1 and "-j DNAT" in applied[0] and "9000" not in applied[0]


def test_manager_applies_one_payload_per_change_and_removes_chains() -> None:
    applied: list[str] = []
    saves: list[int] = []

    def save() -> str:
        saves.append(1)
        return ""

    manager = HostportManager("netk8s", applied.append, save)
    manager.add("ns/a", PodPortMappings("ida", NET, (PortMapping(80, 80),)))
    manager.add("ns/b", PodPortMappings("idb", NET, (PortMapping(81, 80),)))
    manager.remove("ns/a")
    manager.remove("ns/unknown")
    assert len(applied) == 3 and len(saves) == 1  # the built-in jumps are checked once
    assert "-A PREROUTING" in applied[0] and "-A PREROUTING" not in applied[1]
    last = applied[2].splitlines()
    assert f"-X {dnat_chain('netk8s', 'ida')}" in last and f":{dnat_chain('netk8s', 'idb')} - [0:0]" in last


def test_pod_net_comes_from_the_cni_result() -> None:
    result = {"ips": [{"address": "10.244.2.9/24", "gateway": "10.244.2.1"}]}
    assert pod_net_of(result, "10.244.2.9") == IPv4Interface("10.244.2.9/24")
    assert pod_net_of(None, "10.244.2.9") == IPv4Interface("10.244.2.9/32")
