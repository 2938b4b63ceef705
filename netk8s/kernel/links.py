"""Link impairments: packet loss with nftables, and detecting what the kernel can do.

Loss is a table ``nk-loss`` in the namespace that owns one end of the link:
the switch's namespace for a switch link (``bridge`` family, matching the
switch port as input or output bridge port) or the router's namespace for a
point-to-point link (``inet`` family, matching the router's interface on the
way in and on the way out). Each rule drops a packet when
``numgen random mod 10000`` is below the loss in hundredths of a percent, so
each direction of the link loses the configured share (like netem loss on both
ends). Rules carry counters: ``nft list table bridge nk-loss`` shows the drops.

Delay needs the netem qdisc. Whether the kernel has netem or nftables' numgen
is read from ``/proc/config.gz`` when the kernel exposes it, else probed in a
scratch namespace the caller provides. ``render_*`` and ``config_verdict``
are pure; the rest runs commands inside namespaces.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from netk8s.errors import KernelError, UserError
from netk8s.kernel import netns

log = logging.getLogger(__name__)

LOSS_TABLE = "nk-loss"
LOSS_MODULUS = 10000  # numgen draws 0..9999: thresholds are in hundredths of a percent
KERNEL_CONFIG = Path("/proc/config.gz")


class LossFamily(str, Enum):
    BRIDGE = "bridge"  # in a switch namespace, on a bridge port
    INET = "inet"  # in a router namespace, on a routed interface


@dataclass(frozen=True)
class LossRule:
    """Drop ``percent`` of the packets entering and of those leaving through ``ifname``."""

    ifname: str
    percent: float
    origin: str  # the topology path of the link, e.g. links[3]


def loss_threshold(percent: float) -> int:
    """``numgen random mod 10000 < N`` drops ``percent``% of packets; N is at least 1."""
    return max(1, min(LOSS_MODULUS, round(percent * LOSS_MODULUS / 100)))


def _rule(direction: str, rule: LossRule) -> str:
    return (f'{direction} "{rule.ifname}" numgen random mod {LOSS_MODULUS} < {loss_threshold(rule.percent)} '
            f'counter drop comment "{rule.origin} loss {rule.percent:g}%"')


def render_loss_table(family: LossFamily, rules: Sequence[LossRule]) -> str:
    """An ``nft -f`` script that (re)creates the ``nk-loss`` table with exactly ``rules``.

    The leading ``table``/``delete table`` pair makes it idempotent in one transaction.
    """
    lines = [f"table {family.value} {LOSS_TABLE} {{}}", f"delete table {family.value} {LOSS_TABLE}",
             f"table {family.value} {LOSS_TABLE} {{"]
    if family is LossFamily.BRIDGE:
        lines += ["\tchain forward {", "\t\ttype filter hook forward priority filter; policy accept;"]
        for rule in rules:
            lines += [f"\t\t{_rule('iifname', rule)}", f"\t\t{_rule('oifname', rule)}"]
        lines += ["\t}"]
    else:
        # Inbound before conntrack sees the packet; outbound covers forwarded and local packets.
        lines += ["\tchain prerouting {", "\t\ttype filter hook prerouting priority raw; policy accept;"]
        lines += [f"\t\t{_rule('iifname', rule)}" for rule in rules]
        lines += ["\t}", "\tchain postrouting {", "\t\ttype filter hook postrouting priority srcnat; policy accept;"]
        lines += [f"\t\t{_rule('oifname', rule)}" for rule in rules]
        lines += ["\t}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply_loss_table(netns_name: str, family: LossFamily, rules: Sequence[LossRule]) -> None:
    """Install the ``nk-loss`` table in the namespace (replacing a previous one)."""
    if shutil.which("nft") is None:
        raise UserError("links: loss needs the nft command (Debian package nftables); run `make setup` first")
    script = render_loss_table(family, rules)
    result = netns.run(netns_name, ["nft", "-f", "-"], input=script, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise KernelError(f"{rules[0].origin if rules else 'links'}.loss: nft in {netns_name} failed: "
                          f"{detail[0] if detail else result.returncode}")
    log.debug("%s: %s table %s with %d loss rules", netns_name, family.value, LOSS_TABLE, len(rules))


# -- kernel features ------------------------------------------------------------------------------

class LinkFeature(str, Enum):
    NETEM = "netem"
    NFT_BRIDGE_LOSS = "nft-bridge-loss"
    NFT_INET_LOSS = "nft-inet-loss"


# Kernel options each feature needs, all of them.
FEATURE_OPTIONS: Mapping[LinkFeature, tuple[str, ...]] = {
    LinkFeature.NETEM: ("CONFIG_NET_SCH_NETEM",),
    LinkFeature.NFT_BRIDGE_LOSS: ("CONFIG_NF_TABLES", "CONFIG_NF_TABLES_BRIDGE", "CONFIG_NFT_NUMGEN"),
    LinkFeature.NFT_INET_LOSS: ("CONFIG_NF_TABLES", "CONFIG_NF_TABLES_INET", "CONFIG_NFT_NUMGEN"),
}


def parse_kernel_config(text: str) -> dict[str, str]:
    """``CONFIG_X=y`` lines as a dict; ``# CONFIG_X is not set`` lines are simply absent."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("CONFIG_"):
            options[key] = value
    return options


def read_kernel_config(path: Path = KERNEL_CONFIG) -> dict[str, str] | None:
    """The running kernel's build options, or None when it does not expose them."""
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return parse_kernel_config(f.read())
    except OSError:
        return None


def config_verdict(config: Mapping[str, str], feature: LinkFeature) -> bool | None:
    """True when built in, False when an option is missing, None when a module must be probed for."""
    values = [config.get(option) for option in FEATURE_OPTIONS[feature]]
    if any(v not in ("y", "m") for v in values):
        return False
    return True if all(v == "y" for v in values) else None


def probe_feature(scratch_netns: str, feature: LinkFeature) -> bool:
    """Try the feature for real inside a scratch namespace (which the caller deletes)."""
    dev = "nk-probe0"
    if not netns.exists(scratch_netns):
        raise KernelError(f"scratch namespace {scratch_netns} does not exist")
    if netns.run(scratch_netns, ["ip", "link", "show", dev], check=False).returncode != 0:
        netns.run(scratch_netns, ["ip", "link", "add", dev, "type", "veth", "peer", "name", "nk-probe1"])
    if feature is LinkFeature.NETEM:
        argv = ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", "1ms"]
        return netns.run(scratch_netns, argv, check=False).returncode == 0
    if shutil.which("nft") is None:
        return False
    family = LossFamily.BRIDGE if feature is LinkFeature.NFT_BRIDGE_LOSS else LossFamily.INET
    script = render_loss_table(family, [LossRule(dev, 1.0, "probe")])
    return netns.run(scratch_netns, ["nft", "-f", "-"], input=script, check=False).returncode == 0
