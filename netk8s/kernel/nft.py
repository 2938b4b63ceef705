"""nftables backend: ``nft -f`` transactions and ``nft -j list`` inside a network namespace.

The only code that runs ``nft`` for kube-proxy's nftables mode. Everything goes
through ``netk8s.kernel.netns.run`` (``nsenter --net``), so the caller stays in
the root namespace and each call touches exactly one node namespace. Scripts
are checked before they run: every command must name table ``ip kube-proxy``
(the only table this mode may touch), so a rendering bug cannot reach the
node's other tables (iptables-nft's ``ip nat``/``ip filter``, link loss tables).

Kernel quirks worth knowing: an ``nft -f`` script is one atomic transaction
(all of it applies or none does, unlike iptables-restore's per-table
commits); ``add element`` over an existing key with a different verdict fails
with "File exists" (delete first); the kernel adds ``size 65535`` to dynamic
sets and ``nft -j`` does not print their ``dynamic`` flag.

What a transaction costs (nftables 1.0.6, kernel 6.x, measured at 10,000
services x 2 endpoints; bench/bench_proxy.py prints these floors): before a
script with ``add rule``, ``add element`` or any ``delete``, nft dumps every
chain and set of the table into its cache (~150-300 ms), while ``add chain X
{ rules }`` / ``add map M { elements = ... }`` blocks and ``flush chain`` need
only the table list (``netk8s.proxy.nftables.needs_full_cache``); at commit
the kernel re-validates every chain reachable from the base chains whenever
the transaction added a rule or a jump (~70 ms); and each anonymous set
(kube-proxy's ``numgen ... vmap { ... }``) costs a search over all sets of the
table for a free ``__map%d`` name plus walks over the whole transaction,
so creating 10,000 of them is quadratic (~35 s in one transaction).
"""

from __future__ import annotations

import json
import logging
import re

from netk8s.errors import KernelError
from netk8s.kernel import netns

__all__ = ["apply", "objects", "list_text", "list_json", "check_script", "NetnsNft"]

log = logging.getLogger(__name__)

FAMILY = "ip"
TABLE = "kube-proxy"
_TIMEOUT = 600.0  # a full sync transaction at 10,000 services takes seconds to tens of seconds
_LIST_TIMEOUT = 120.0
# nft reports "/dev/stdin:7:1-20: Error: ..." (or "-:7:..."): the line of the script at fault.
_LINE_RE = re.compile(r"^(?:/dev/stdin|-):(\d+):")


def check_script(script: str, family: str = FAMILY, table: str = TABLE) -> None:
    """Refuse a script with a command that is not about ``<family> <table>`` (``ValueError`` naming the line)."""
    for number, line in enumerate(script.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split(None, 4)
        if len(words) < 4 or words[2] != family or words[3] != table:
            raise ValueError(f"nft script line {number} is not about table {family} {table}: {stripped[:120]!r}")


def _failure(netns_name: str, stderr: str, script: str) -> KernelError:
    lines = script.splitlines()
    where = ""
    reason = ""
    for raw in stderr.splitlines():
        match = _LINE_RE.match(raw.strip())
        if match and not where:
            number = int(match.group(1))
            text = lines[number - 1] if 0 < number <= len(lines) else ""
            where = f" at line {number} {text[:200]!r}"
            reason = raw.strip().split("Error:", 1)[-1].strip()
    if not reason:
        reason = "; ".join(ln.strip() for ln in stderr.splitlines() if ln.strip() and not set(ln.strip()) <= {"^", "~"})
    return KernelError(f"nft -f in {netns_name} failed{where}: {reason or 'unknown error'}")


def apply(netns_name: str, script: str) -> None:
    """Run ``script`` as one atomic ``nft -f`` transaction in the namespace; ``KernelError`` names the line."""
    try:
        check_script(script)
    except ValueError as exc:
        raise KernelError(f"refusing to run nft in {netns_name}: {exc}") from None
    result = netns.run(netns_name, ["nft", "-f", "-"], input=script, check=False, timeout=_TIMEOUT)
    if result.returncode != 0:
        raise _failure(netns_name, result.stderr or result.stdout or "", script)
    log.debug("nft -f in %s: applied %d lines", netns_name, script.count("\n"))


def _table_missing(stderr: str) -> bool:
    return "No such file or directory" in stderr


def _list_table(netns_name: str, json: bool) -> str:
    argv = ["nft", *(["-j"] if json else []), "list", "table", FAMILY, TABLE]
    result = netns.run(netns_name, argv, check=False, timeout=_LIST_TIMEOUT)
    if result.returncode != 0:
        if _table_missing(result.stderr):
            return ""
        raise KernelError(f"{' '.join(argv)} in {netns_name} failed: {result.stderr.strip()}")
    return result.stdout


def list_json(netns_name: str) -> str:
    """``nft -j list table ip kube-proxy``; "" when the table does not exist."""
    return _list_table(netns_name, json=True)


def list_text(netns_name: str) -> str:
    """``nft list table ip kube-proxy`` (what a user sees on a node); "" when the table does not exist."""
    return _list_table(netns_name, json=False)


def _names(netns_name: str, kind: str) -> set[str]:
    # "list chains ip" / "list sets ip" list the family's objects without their
    # rules or elements: cheap even with tens of thousands of services.
    result = netns.run(netns_name, ["nft", "-j", "list", kind, FAMILY], check=False, timeout=_LIST_TIMEOUT)
    if result.returncode != 0:
        raise KernelError(f"nft -j list {kind} {FAMILY} in {netns_name} failed: {result.stderr.strip()}")
    key = kind[:-1]  # "chains" -> "chain"
    try:
        items = json.loads(result.stdout or "{}").get("nftables", [])
    except json.JSONDecodeError as exc:
        raise KernelError(f"nft -j list {kind} {FAMILY} in {netns_name}: unreadable JSON ({exc})") from None
    return {obj[key]["name"] for obj in items if key in obj and obj[key].get("table") == TABLE}


def objects(netns_name: str) -> tuple[set[str], set[str]]:
    """(chains, sets) of table ``ip kube-proxy`` (empty when it does not exist)."""
    return _names(netns_name, "chains"), _names(netns_name, "sets")


class NetnsNft:
    """The nftables mode's kernel backend bound to one node namespace (``netk8s.proxy.nftables.NftBackend``)."""

    def __init__(self, netns_name: str) -> None:
        self.netns_name = netns_name

    def apply(self, script: str) -> None:
        apply(self.netns_name, script)

    def objects(self) -> tuple[set[str], set[str]]:
        return objects(self.netns_name)

    def list_text(self) -> str:
        return list_text(self.netns_name)

    def list_json(self) -> str:
        return list_json(self.netns_name)
