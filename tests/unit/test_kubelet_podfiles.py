"""Pod identity files: hostname and domain, managed hosts file, resolv.conf per dnsPolicy."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netk8s.errors import ValidationError
from netk8s.kubelet import podfiles
from netk8s.kubelet.podfiles import DnsConfig, PodIdentity

DNS = [IPv4Address("10.96.0.10")]
NODE = DnsConfig(["192.0.2.1", "192.0.2.2"], ["corp.example"], ["timeout:2"])


def pod(name: str = "web", namespace: str = "team", **spec: object) -> dict:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}


def test_identity_uses_the_pod_name_or_spec_hostname_and_subdomain() -> None:
    assert podfiles.pod_identity(pod(), "cluster.local") == PodIdentity("web")
    ident = podfiles.pod_identity(pod(hostname="web-0", subdomain="web"), "cluster.local")
    assert ident == PodIdentity("web-0", "web.team.svc.cluster.local")
    assert ident.fqdn == "web-0.web.team.svc.cluster.local"


def test_long_pod_names_are_cut_to_63_characters_without_trailing_dash() -> None:
    name = "a" * 62 + "-" + "b" * 10
    assert podfiles.pod_identity(pod(name), "cluster.local").hostname == "a" * 62


def test_invalid_hostname_names_the_field() -> None:
    with pytest.raises(ValidationError, match="spec.hostname"):
        podfiles.pod_identity(pod(hostname="Not_A_Label"), "cluster.local")


def test_set_hostname_as_fqdn() -> None:
    p = pod(hostname="h", subdomain="s", setHostnameAsFQDN=True)
    ident = podfiles.pod_identity(p, "cluster.local")
    assert podfiles.kernel_hostname(p, ident) == "h.s.team.svc.cluster.local"
    assert podfiles.kernel_hostname(pod(), podfiles.pod_identity(pod(), "cluster.local")) == "web"
    long_pod = pod(hostname="h" * 40, subdomain="s" * 20, setHostnameAsFQDN=True)
    with pytest.raises(ValidationError, match="is too long"):
        podfiles.kernel_hostname(long_pod, podfiles.pod_identity(long_pod, "cluster.local"))


def test_managed_hosts_file_matches_the_kubelets() -> None:
    assert podfiles.render_hosts(["10.244.1.5"], PodIdentity("web")) == (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        "10.244.1.5\tweb\n")
    text = podfiles.render_hosts(["10.244.1.5"], PodIdentity("web-0", "web.team.svc.cluster.local"),
                                 [{"ip": "10.0.0.9", "hostnames": ["db", "cache"]}])
    assert text.endswith("10.244.1.5\tweb-0.web.team.svc.cluster.local\tweb-0\n"
                         "\n# Entries added by HostAliases.\n10.0.0.9\tdb\n10.0.0.9\tcache\n")


def test_host_network_hosts_file_is_the_nodes() -> None:
    assert podfiles.render_hosts_host_network("127.0.0.1 localhost\n") == \
        "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n"


def test_cluster_first_uses_the_cluster_dns_and_appends_the_nodes_search_domains() -> None:
    result = podfiles.pod_dns(pod(dnsPolicy="ClusterFirst"), DNS, "cluster.local", NODE)
    assert podfiles.render_resolv_conf(result.config) == (
        "search team.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n")
    assert result.warnings == []


def test_default_and_host_network_use_the_nodes_resolver() -> None:
    for p in (pod(dnsPolicy="Default"), pod(dnsPolicy="ClusterFirst", hostNetwork=True)):
        cfg = podfiles.pod_dns(p, DNS, "cluster.local", NODE).config
        assert (cfg.nameservers, cfg.searches, cfg.options) == (NODE.nameservers, NODE.searches, NODE.options)
    cfg = podfiles.pod_dns(pod(dnsPolicy="ClusterFirstWithHostNet", hostNetwork=True), DNS, "cluster.local",
                           NODE).config
    assert cfg.nameservers == ["10.96.0.10"]


def test_none_takes_only_dns_config_and_options_merge_by_name() -> None:
    p = pod(dnsPolicy="None", dnsConfig={"nameservers": ["1.1.1.1"], "searches": ["a.test"],
                                         "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]})
    assert podfiles.render_resolv_conf(podfiles.pod_dns(p, DNS, "cluster.local", NODE).config) == \
        "search a.test\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"
    merged = podfiles.pod_dns(pod(dnsConfig={"options": [{"name": "ndots", "value": "1"}],
                                             "searches": ["svc.cluster.local", "x.test"]}),
                              DNS, "cluster.local", DnsConfig()).config
    assert merged.options == ["ndots:1"]
    assert merged.searches == ["team.svc.cluster.local", "svc.cluster.local", "cluster.local", "x.test"]


def test_limits_trim_nameservers_and_search_paths_with_a_warning() -> None:
    p = pod(dnsPolicy="None", dnsConfig={"nameservers": ["1.0.0.1", "1.0.0.2", "1.0.0.3", "1.0.0.4"],
                                         "searches": [f"d{i}.test" for i in range(40)]})
    result = podfiles.pod_dns(p, DNS, "cluster.local", NODE)
    assert result.config.nameservers == ["1.0.0.1", "1.0.0.2", "1.0.0.3"]
    assert len(result.config.searches) == 32
    assert len(result.warnings) == 2 and result.warnings[0].startswith("Nameserver limits were exceeded")


def test_unknown_dns_policy_names_the_field() -> None:
    with pytest.raises(ValidationError, match="spec.dnsPolicy"):
        podfiles.pod_dns(pod(dnsPolicy="Sometimes"), DNS, "cluster.local", NODE)


def test_parse_resolv_conf() -> None:
    cfg = podfiles.parse_resolv_conf("# comment\nnameserver 9.9.9.9\ndomain old.test\nsearch a.test. b.test\n"
                                     "options rotate timeout:1\nnameserver 8.8.8.8 ; x\n")
    assert (cfg.nameservers, cfg.searches, cfg.options) == (["9.9.9.9", "8.8.8.8"], ["a.test", "b.test"],
                                                             ["rotate", "timeout:1"])


def test_pod_files_are_written_and_removed(tmp_path: Path) -> None:
    directory = podfiles.write_pod_files("nk-x-default-p-1", {"hosts": "h\n", "resolv.conf": "r\n"}, tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == ["hosts", "resolv.conf"]
    assert (directory / "hosts").read_text() == "h\n"
    (tmp_path / "nk-x-node").mkdir()
    (tmp_path / "nk-x-node" / "resolv.conf").write_text("nameserver 203.0.113.1\n")
    assert podfiles.node_resolv_conf("nk-x-node", tmp_path).nameservers == ["203.0.113.1"]
    podfiles.remove_pod_files("nk-x-default-p-1", tmp_path)
    assert not directory.exists()
