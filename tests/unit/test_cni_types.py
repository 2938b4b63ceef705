"""CNI protocol values: env/config validation with their CNI codes, result shapes, naming, conflists, main()."""

from __future__ import annotations

import copy
import io
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from netk8s.cni import main as cni_main
from netk8s.cni.invoker import Attachment, CniInvoker, load_conflist, node_conflist
from netk8s.cni.types import (
    CNI_VERSION,
    SUPPORTED_VERSIONS,
    CNIError,
    Command,
    Dns,
    ErrorCode,
    Interface,
    IpConfig,
    Result,
    Route,
    masq_chain_name,
    masq_comment,
    masq_rules,
    parse_cni_args,
    parse_config,
    parse_env,
    parse_result,
    peek_version,
    result_routes,
    version_json,
)
from netk8s.errors import ValidationError

BASE: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "type": "netk8s-cni",
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.3.0/24"}]], "dataDir": "/tmp/nk-unit"},
}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc-1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


def conf(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    out.update(changes)
    return out


def ipam(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE["ipam"])
    out.update(changes)
    return out


def code_of(fn: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(CNIError) as info:
        fn(*args)
    return info.value.code, info.value.msg


# ----------------------------------------------------------------------------- environment (code 4)


@pytest.mark.parametrize("env,needle", [
    ({}, "CNI_COMMAND"),
    ({**ENV, "CNI_COMMAND": "ATTACH"}, "CNI_COMMAND"),
    ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, "CNI_CONTAINERID"),
    ({**ENV, "CNI_CONTAINERID": "-bad"}, "CNI_CONTAINERID"),
    ({k: v for k, v in ENV.items() if k != "CNI_IFNAME"}, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "a-very-long-ifname"}, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
    ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, "CNI_NETNS"),
    ({**ENV, "CNI_NETNS": "relative/ns"}, "CNI_NETNS"),
    ({**ENV, "CNI_ARGS": "K8S_POD_NAME=web;garbage"}, "CNI_ARGS"),
])
def test_bad_environment_is_code_4_naming_the_variable(env: dict[str, str], needle: str) -> None:
    code, msg = code_of(parse_env, env)
    assert code == ErrorCode.INVALID_ENVIRONMENT == 4
    assert msg.startswith(needle)


def test_environment_parsed() -> None:
    env = parse_env({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web", "CNI_PATH": "/a:/b"})
    assert env.command is Command.ADD and env.container_id == "abc-1" and env.ifname == "eth0"
    assert env.args == (("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web"))
    assert env.path == ("/a", "/b")
    # DEL may come without a namespace (spec: clean up as much as possible)
    assert parse_env({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""
    assert parse_env({"CNI_COMMAND": "VERSION"}).command is Command.VERSION
    assert parse_cni_args("A=1;;B=") == (("A", "1"), ("B", ""))


# ----------------------------------------------------------------------------- configuration (codes 6, 1, 7)


def test_undecodable_json_is_code_6() -> None:
    assert code_of(parse_config, b"{not json", Command.ADD)[0] == ErrorCode.DECODING_FAILURE == 6
    assert code_of(parse_config, b"\xff\xfe", Command.ADD)[0] == 6


@pytest.mark.parametrize("version,command", [("9.9.9", Command.ADD), ("0.2.0", Command.ADD),
                                             ("0.3.1", Command.CHECK), ("1.0.0", Command.GC),
                                             ("1.0.0", Command.STATUS)])
def test_unsupported_version_is_code_1(version: str, command: Command) -> None:
    body = conf(cniVersion=version, **{"cni.dev/valid-attachments": []})
    code, msg = code_of(parse_config, json.dumps(body), command)
    assert code == ErrorCode.INCOMPATIBLE_VERSION == 1
    assert msg.startswith("cniVersion")


@pytest.mark.parametrize("body,field", [
    ([1, 2], "(root)"),
    ({k: v for k, v in BASE.items() if k != "cniVersion"}, "cniVersion"),
    (conf(vlan=3), "vlan"),
    (conf(type="bridge"), "type"),
    (conf(name="bad/name"), "name"),
    (conf(bridge="this-name-is-too-long"), "bridge"),
    (conf(mtu=20), "mtu"),
    (conf(mtu="1500"), "mtu"),
    (conf(hairpinMode="yes"), "hairpinMode"),
    (conf(args=[1]), "args"),
    ({k: v for k, v in BASE.items() if k != "ipam"}, "ipam"),
    (conf(ipam=ipam(type="dhcp")), "ipam.type"),
    (conf(ipam=ipam(resolvConf="/etc/resolv.conf")), "ipam.resolvConf"),
    (conf(ipam=ipam(ranges=[])), "ipam.ranges"),
    (conf(ipam=ipam(ranges=[[{"subnet": "10.244.3.0/33"}]])), "ipam.ranges[0][0].subnet"),
    (conf(ipam=ipam(ranges=[[{"subnet": "10.244.3.0/24", "rangeStart": "10.244.4.1"}]])),
     "ipam.ranges[0][0].rangeStart"),
    (conf(ipam=ipam(ranges=[[{"subnet": "10.244.3.0/24", "rangeStart": "10.244.3.9", "rangeEnd": "10.244.3.5"}]])),
     "ipam.ranges[0][0].rangeStart"),
    (conf(ipam=ipam(ranges=[[{"subnet": "10.244.3.0/24", "rangeEnd": "10.244.3.255"}]])),
     "ipam.ranges[0][0].rangeEnd"),
    (conf(ipam=ipam(ranges=[[{"subnet": "10.244.3.0/24", "gateway": "10.9.9.9"}]])), "ipam.ranges[0][0].gateway"),
    (conf(ipam=ipam(ranges=[[{"subnet": "10.244.3.0/24", "color": "red"}]])), "ipam.ranges[0][0].color"),
    (conf(ipam=ipam(ranges=[[{"subnet": "10.244.3.0/31"}]])), "ipam.ranges[0][0].subnet"),
    (conf(ipam=ipam(ranges=[[{"subnet": "fd00::/64"}]])), "ipam.ranges[0][0].subnet"),
    (conf(ipam=ipam(ranges=[[{"subnet": "10.244.3.0/24"}], [{"subnet": "10.244.3.128/25"}]])),
     "ipam.ranges[1][0]"),
    (conf(ipam=ipam(routes=[{"gw": "10.244.3.1"}])), "ipam.routes[0].dst"),
    (conf(ipam=ipam(dataDir="relative")), "ipam.dataDir"),
    (conf(isDefaultGateway=True, ipam=ipam(routes=[{"dst": "0.0.0.0/0", "gw": "10.244.3.9"}])), "isDefaultGateway"),
    (conf(dns={"nameservers": "10.96.0.10"}), "dns.nameservers"),
    (conf(prevResult={"ips": [{"address": "10.244.3.300/24"}]}), "prevResult.ips[0].address"),
    (conf(prevResult={"interfaces": [], "ips": [{"address": "10.244.3.3/24", "interface": 1}]}),
     "prevResult.ips[0].interface"),
])
def test_invalid_config_is_code_7_naming_the_field(body: Any, field: str) -> None:
    code, msg = code_of(parse_config, json.dumps(body), Command.ADD)
    assert code == ErrorCode.INVALID_NETWORK_CONFIG == 7
    assert msg.startswith(field + ":"), msg


def test_check_needs_prev_result_and_gc_needs_valid_attachments() -> None:
    code, msg = code_of(parse_config, json.dumps(BASE), Command.CHECK)
    assert (code, msg.split(":")[0]) == (7, "prevResult")
    code, msg = code_of(parse_config, json.dumps(conf(cniVersion="1.1.0")), Command.GC)
    assert (code, msg.split(":")[0]) == (7, "cni.dev/valid-attachments")


def test_defaults_and_canonical_ranges() -> None:
    c = parse_config(json.dumps(conf(isDefaultGateway=True, args={"cni": {"whatever": 1}},
                                     runtimeConfig={"portMappings": []})), Command.ADD)
    assert c.bridge == "cni0" and c.mtu == 1500 and not c.ip_masq and not c.hairpin_mode
    assert c.is_gateway and c.is_default_gateway  # isDefaultGateway implies isGateway
    (rng,), = c.ipam.range_sets
    assert str(rng.range_start) == "10.244.3.1" and str(rng.range_end) == "10.244.3.254"
    assert str(rng.gateway) == "10.244.3.1"
    assert c.ipam.data_dir == Path("/tmp/nk-unit")
    legacy = parse_config(json.dumps(conf(ipam={"type": "host-local", "subnet": "10.1.0.0/16",
                                                "rangeStart": "10.1.0.10"})), Command.ADD)
    (rng,), = legacy.ipam.range_sets
    assert str(rng.range_start) == "10.1.0.10" and str(rng.range_end) == "10.1.255.254"


def test_valid_attachments_parsed_for_gc() -> None:
    body = conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
    assert parse_config(json.dumps(body), Command.GC).valid_attachments == frozenset({("a", "eth0")})


# ----------------------------------------------------------------------------- results


def sample_result(version: str) -> Result:
    return Result(cni_version=version,
                  interfaces=(Interface("cni0", "aa:bb:cc:00:00:01"), Interface("veth0a1b2c3d", "aa:bb:cc:00:00:02"),
                              Interface("eth0", "aa:bb:cc:00:00:03", sandbox="/run/netns/p")),
                  ips=(IpConfig(ipaddress.ip_interface("10.244.3.2/24"), ipaddress.ip_address("10.244.3.1"), 2),),
                  routes=(Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.244.3.1")),))


def test_result_json_shape_1_0_0() -> None:
    out = sample_result("1.0.0").to_json()
    assert list(out) == ["cniVersion", "interfaces", "ips", "routes", "dns"]
    assert out["interfaces"][0] == {"name": "cni0", "mac": "aa:bb:cc:00:00:01"}
    assert out["interfaces"][2]["sandbox"] == "/run/netns/p"
    assert out["ips"] == [{"interface": 2, "address": "10.244.3.2/24", "gateway": "10.244.3.1"}]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.3.1"}]
    assert out["dns"] == {}


def test_result_json_shape_before_1_0_has_ip_version() -> None:
    out = sample_result("0.3.1").to_json()
    assert out["cniVersion"] == "0.3.1"
    assert out["ips"][0]["version"] == "4"


def test_result_round_trip_and_dns() -> None:
    res = Result(cni_version="1.0.0", dns=Dns(nameservers=("10.96.0.10",), search=("cluster.local",)))
    assert res.to_json()["dns"] == {"nameservers": ["10.96.0.10"], "search": ["cluster.local"]}
    for version in ("1.0.0", "0.4.0"):
        original = sample_result(version)
        assert parse_result(original.to_json()) == original


def test_result_routes_merge_default_route() -> None:
    body = conf(isDefaultGateway=True, ipam=ipam(routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16"},
                                                         {"dst": "192.168.0.0/16"}]))
    c = parse_config(json.dumps(body), Command.ADD)
    gw = ipaddress.ip_address("10.244.3.1")
    routes = result_routes(c, [gw])
    assert routes == (Route(ipaddress.ip_network("192.168.0.0/16")), Route(ipaddress.ip_network("0.0.0.0/0"), gw))
    plain = parse_config(json.dumps(conf(ipam=ipam(routes=[{"dst": "0.0.0.0/0"}]))), Command.ADD)
    assert result_routes(plain, [gw]) == (Route(ipaddress.ip_network("0.0.0.0/0")),)


def test_version_and_error_json() -> None:
    assert version_json() == {"cniVersion": CNI_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert SUPPORTED_VERSIONS == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    err = CNIError(7, "bridge: bad", "more").to_json("1.0.0")
    assert err == {"cniVersion": "1.0.0", "code": 7, "msg": "bridge: bad", "details": "more"}
    assert peek_version(b'{"cniVersion": "0.4.0"}') == "0.4.0"
    assert peek_version(b"junk") == CNI_VERSION


def test_masq_naming_matches_reference_plugin() -> None:
    # Observed from Debian's /usr/lib/cni/bridge (ipMasq) for network "nktest", container "abc123".
    assert masq_chain_name("nktest", "abc123") == "CNI-f8c45093417d361c7c64b953"
    assert masq_comment("nktest", "abc123") == 'name: "nktest" id: "abc123"'
    chain, rules, jump = masq_rules("nktest", "abc123", ipaddress.ip_interface("10.244.9.2/24"))
    assert rules[0][:4] == ["-d", "10.244.9.0/24", "-j", "ACCEPT"]
    assert rules[1][:5] == ["!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"]
    assert jump[:4] == ["-s", "10.244.9.2/32", "-j", chain]
    assert len(masq_chain_name("n" * 300, "c" * 300)) == 28


# ----------------------------------------------------------------------------- conflists (invoker, pure parts)


def test_node_conflist_shapes(tmp_path: Path) -> None:
    ours = node_conflist("nk-pods", ipaddress.IPv4Network("10.244.2.0/24"), tmp_path, mtu=1450)
    plugin = ours["plugins"][0]
    assert ours["name"] == "nk-pods" and ours["cniVersion"] == "1.0.0"
    assert plugin["type"] == "netk8s-cni" and plugin["bridge"] == "cni0" and plugin["mtu"] == 1450
    assert plugin["isGateway"] and plugin["isDefaultGateway"] and plugin["hairpinMode"] and not plugin["ipMasq"]
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24", "gateway": "10.244.2.1"}]]
    assert plugin["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}]
    assert plugin["ipam"]["dataDir"] == str(tmp_path)
    # our plugin accepts its own conflist
    CniInvoker(ours, [], "/run/netns/unused")
    single = {**plugin, "name": "nk-pods", "cniVersion": "1.0.0"}
    assert parse_config(json.dumps(single), Command.ADD).ipam.routes[0].dst.prefixlen == 0
    ref = node_conflist("nk-pods", ipaddress.IPv4Network("10.244.2.0/24"), tmp_path, plugin_type="bridge")
    assert ref["plugins"][0]["type"] == "bridge" and ref["plugins"][0]["ipam"]["type"] == "host-local"
    assert "routes" not in ref["plugins"][0]["ipam"]  # isDefaultGateway supplies it (see node_conflist)


@pytest.mark.parametrize("body,field", [
    ({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, "name"),
    ({"name": "n", "plugins": [{"type": "x"}]}, "cniVersion"),
    ({"name": "n", "cniVersion": "one", "plugins": [{"type": "x"}]}, "cniVersion"),
    ({"name": "n", "cniVersion": "1.0.0", "plugins": []}, "plugins"),
    ({"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "x"}, {"bridge": "b"}]}, "plugins[1].type"),
    ({"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "../x"}]}, "plugins[0].type"),
    ({"name": "n", "cniVersion": "1.0.0", "disableCheck": "yes", "plugins": [{"type": "x"}]}, "disableCheck"),
])
def test_conflist_validation_names_the_field(tmp_path: Path, body: Any, field: str) -> None:
    path = tmp_path / "10-net.conflist"
    path.write_text(json.dumps(body))
    with pytest.raises(ValidationError) as info:
        load_conflist(path)
    assert info.value.path == f"{path}.{field}"


def test_load_conflist_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conflist"
    bad.write_text("{")
    with pytest.raises(ValidationError, match="not valid JSON"):
        load_conflist(bad)
    with pytest.raises(ValidationError, match="no such"):
        load_conflist(tmp_path / "missing.conflist")
    single = tmp_path / "10-one.conf"
    single.write_text(json.dumps({"cniVersion": "1.0.0", "name": "one", "type": "bridge"}))
    loaded = load_conflist(single)
    assert loaded["name"] == "one" and [p["type"] for p in loaded["plugins"]] == ["bridge"]


def test_invoker_builds_env_and_stdin() -> None:
    inv = CniInvoker({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a", "x": 1}]}, ["/b1", "/b2"],
                     "nk-t0-node")
    att = Attachment("c1", "/run/netns/p", args=(("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web")))
    env = inv.environment(Command.DEL, att)
    assert env == {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0",
                   "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web", "CNI_PATH": "/b1:/b2"}
    stdin = inv.plugin_config({"type": "a", "x": 1}, {"cniVersion": "1.0.0"})
    assert stdin == {"type": "a", "x": 1, "name": "n", "cniVersion": "1.0.0", "prevResult": {"cniVersion": "1.0.0"}}
    assert inv.host_netns == "/run/netns/nk-t0-node"


# ----------------------------------------------------------------------------- the executable's main()


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str],
             stdin: bytes) -> tuple[int, dict[str, Any]]:
    for key in ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fake = io.TextIOWrapper(io.BytesIO(stdin))
    monkeypatch.setattr(sys, "stdin", fake)
    rc = cni_main.main()
    return rc, json.loads(capsys.readouterr().out)


def test_main_answers_errors_as_cni_json(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_main(monkeypatch, capsys, {"CNI_COMMAND": "ADD"}, json.dumps(BASE).encode())
    assert rc == 1 and out["code"] == 4 and out["cniVersion"] == "1.0.0" and set(out) == {
        "cniVersion", "code", "msg", "details"}
    rc, out = run_main(monkeypatch, capsys, ENV, b"{oops")
    assert rc == 1 and out["code"] == 6
    rc, out = run_main(monkeypatch, capsys, ENV, json.dumps(conf(cniVersion="0.1.0")).encode())
    assert rc == 1 and out["code"] == 1
    rc, out = run_main(monkeypatch, capsys, ENV, json.dumps(conf(bogus=True)).encode())
    assert rc == 1 and out["code"] == 7 and out["msg"].startswith("bogus:")
    rc, out = run_main(monkeypatch, capsys, {"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and out == version_json()
