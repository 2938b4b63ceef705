"""conntrack backend: list and delete connection-tracking entries inside a node's namespace.

The conntrack table is per network namespace, so every call runs the
``conntrack`` tool (conntrack-tools) through ``netk8s.kernel.netns.run`` in
exactly one node namespace. ``ConntrackCleaner`` is what the proxier calls
after each successful sync: it asks ``netk8s.proxy.conntrack.plan_cleanup``
which UDP flows went stale and deletes them here.

Tool quirk: ``conntrack -D`` exits 1 when no entry matched ("0 flow entries
have been deleted."), which is not an error for us; the count on stderr is the
real result.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from typing import Callable

from netk8s.api.network import Protocol
from netk8s.errors import KernelError
from netk8s.kernel import netns
from netk8s.proxy.conntrack import ConntrackFilter, ProxyStateLike, plan_cleanup

log = logging.getLogger(__name__)

_TIMEOUT = 10.0
_COUNT_RE = re.compile(r"(\d+) flow entries have been (?:deleted|shown)")


def _count(stderr: str) -> int | None:
    match = _COUNT_RE.search(stderr)
    return int(match.group(1)) if match else None


def delete_entries(netns_name: str, flt: ConntrackFilter) -> int:
    """``conntrack -D`` with the filter in the namespace; returns how many entries were deleted."""
    result = netns.run(netns_name, ["conntrack", "-D", *flt.args()], check=False, timeout=_TIMEOUT)
    count = _count(result.stderr)
    if count is None:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise KernelError(f"conntrack -D {flt} in {netns_name} failed: "
                          f"{detail[-1] if detail else f'exit code {result.returncode}'}")
    return count


def list_entries(netns_name: str, protocol: Protocol | None = None) -> list[str]:
    """``conntrack -L`` in the namespace, one line per entry (for tests and diagnostics)."""
    argv = ["conntrack", "-L"] + (["-p", protocol.lowercase] if protocol is not None else [])
    result = netns.run(netns_name, argv, check=False, timeout=_TIMEOUT)
    if _count(result.stderr) is None:
        raise KernelError(f"conntrack -L in {netns_name} failed: {result.stderr.strip() or result.returncode}")
    return [line for line in result.stdout.splitlines() if line.strip()]


Deleter = Callable[[str, ConntrackFilter], int]


class ConntrackCleaner:
    """Deletes the stale UDP flows of one node after each successful proxy sync.

    Failures are logged, never raised: the rules are already in place, and a
    flow left behind only lasts until the client goes quiet for the UDP
    timeout (kube-proxy treats a failed clean-up the same way).
    """

    def __init__(self, netns_name: str, delete: Deleter = delete_entries) -> None:
        self.netns_name = netns_name
        self._delete = delete
        self.deleted_total = 0
        self.failures = 0

    def after_sync(self, old_state: ProxyStateLike | None, new_state: ProxyStateLike,
                   changed: Collection[str] | None = None) -> list[ConntrackFilter]:
        """Delete what ``plan_cleanup(old_state, new_state, changed)`` names; returns the filters that were run."""
        filters = plan_cleanup(old_state, new_state, changed)
        for flt in filters:
            try:
                deleted = self._delete(self.netns_name, flt)
            except KernelError as exc:
                self.failures += 1
                log.warning("%s: clearing stale UDP flows failed (%s): %s", self.netns_name, flt.reason, exc)
                continue
            self.deleted_total += deleted
            if deleted:
                log.info("%s: deleted %d stale conntrack entries (%s)", self.netns_name, deleted, flt.reason)
        return filters
