"""The kubelet's node heartbeat: a coordination.k8s.io/v1 Lease per node.

Like the kubelet's node-lease controller, ``LeaseHeartbeat`` keeps the Lease
``kube-node-lease/<node>`` fresh: ``spec.holderIdentity`` is the node name,
``spec.leaseDurationSeconds`` the lease duration and ``spec.renewTime`` a
MicroTime stamped on every renewal; the Lease is owned by its Node (so it goes
when the Node goes). The node lifecycle controller reads ``renewTime`` to tell
a live kubelet from a dead one. ``pause()``/``resume()`` stop and restart the
renewals without stopping the thread, to simulate a kubelet that died.

Building the renewed object (``renewed_lease``) and MicroTime formatting are
pure; only ``LeaseHeartbeat`` talks to the API server.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import threading

from netk8s.api import meta
from netk8s.api.resources import LEASES, NODES
from netk8s.client.rest import ApiClient
from netk8s.errors import ApiError, NetK8sError

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
DEFAULT_DURATION_SECONDS = 40
_MAX_ATTEMPTS = 5
_FIRST_RETRY_DELAY = 0.2

_MICRO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_micro_time(when: _dt.datetime) -> str:
    """metav1.MicroTime as the API marshals it: ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    return when.astimezone(_dt.timezone.utc).strftime(_MICRO_FORMAT)


def parse_micro_time(value: str | None) -> _dt.datetime | None:
    """Parse a MicroTime (or a second-precision metav1.Time); None when absent or malformed."""
    if not value:
        return None
    try:
        return _dt.datetime.strptime(value, _MICRO_FORMAT).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return meta.parse_time(value)


def node_owner_reference(node_name: str, node_uid: str) -> dict:
    """The owner reference the kubelet puts on its Lease (no controller flag)."""
    return {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}


def renewed_lease(existing: dict | None, node_name: str, duration_seconds: int, now: _dt.datetime,
                  node_uid: str = "") -> dict:
    """The Lease to write for a renewal at ``now``: ``existing`` (not modified) with a fresh
    renewTime, or a new Lease when there is none. The Node owner reference is added when
    ``node_uid`` is known and the Lease does not carry one yet."""
    if existing is None:
        lease: dict = {"apiVersion": LEASES.api_version, "kind": LEASES.kind,
                       "metadata": {"name": node_name, "namespace": LEASE_NAMESPACE}, "spec": {}}
    else:
        lease = copy.deepcopy(existing)
    md = lease.setdefault("metadata", {})
    spec = lease.setdefault("spec", {})
    spec["holderIdentity"] = node_name
    spec["leaseDurationSeconds"] = int(duration_seconds)
    spec["renewTime"] = format_micro_time(now)
    if node_uid:
        refs = md.get("ownerReferences") or []
        if not any(ref.get("kind") == "Node" and ref.get("uid") == node_uid for ref in refs):
            md["ownerReferences"] = [ref for ref in refs if ref.get("kind") != "Node"] + [
                node_owner_reference(node_name, node_uid)]
    return lease


class LeaseHeartbeat:
    """Renews ``kube-node-lease/<node>`` every ``renew_interval`` seconds on a thread."""

    def __init__(self, client: ApiClient, node_name: str, duration_seconds: int = DEFAULT_DURATION_SECONDS,
                 renew_interval: float | None = None) -> None:
        if duration_seconds <= 0:
            raise NetK8sError(f"lease duration must be positive, got {duration_seconds}")
        self.client = client
        self.node_name = node_name
        self.duration_seconds = duration_seconds
        self.renew_interval = renew_interval if renew_interval is not None else duration_seconds / 4
        if self.renew_interval <= 0:
            raise NetK8sError(f"lease renew interval must be positive, got {self.renew_interval}")
        self._lease: dict | None = None  # the last Lease we read or wrote
        self._node_uid = ""
        self._lock = threading.Lock()  # one renewal at a time (thread vs. renew_once callers)
        self._paused = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.node_name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def pause(self) -> None:
        """Stop renewing (the Lease goes stale, as when the kubelet dies)."""
        self._paused.set()
        log.info("lease heartbeat of node %s paused", self.node_name)

    def resume(self) -> None:
        """Renew again, at once."""
        self._paused.clear()
        self._wake.set()
        log.info("lease heartbeat of node %s resumed", self.node_name)

    # -- renewal -------------------------------------------------------------------------

    def renew_once(self) -> dict:
        """Create or renew the Lease now; returns the stored Lease.

        Conflicts (someone else wrote it, or it already exists) and 404s (it was
        deleted under us) are retried from a fresh read.
        """
        with self._lock:
            last_error: ApiError | None = None
            for _ in range(_MAX_ATTEMPTS):
                try:
                    return self._try_renew()
                except ApiError as exc:
                    if exc.code not in (404, 409):
                        raise
                    last_error = exc
                    # Re-read before the next attempt; a deleted Lease may mean a re-created Node.
                    self._lease = None
                    self._node_uid = ""
            raise NetK8sError(f"could not renew lease {LEASE_NAMESPACE}/{self.node_name} after {_MAX_ATTEMPTS} "
                              f"attempts: {last_error}")

    def _try_renew(self) -> dict:
        if not self._node_uid:
            self._node_uid = self._lookup_node_uid()
        now = _dt.datetime.now(_dt.timezone.utc)
        if self._lease is None:
            try:
                self._lease = self.client.get(LEASES, self.node_name, LEASE_NAMESPACE)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                created = self.client.create(LEASES, renewed_lease(None, self.node_name, self.duration_seconds,
                                                                   now, self._node_uid), LEASE_NAMESPACE)
                self._lease = created
                return created
        stored = self.client.update(LEASES, renewed_lease(self._lease, self.node_name, self.duration_seconds,
                                                          now, self._node_uid))
        self._lease = stored
        return stored

    def _lookup_node_uid(self) -> str:
        try:
            return meta.uid_of(self.client.get(NODES, self.node_name))
        except ApiError as exc:
            if exc.code != 404:
                raise
            return ""  # not registered yet: the owner reference is added on a later renewal

    def _run(self) -> None:
        delay = 0.0  # renew as soon as we start
        retry = _FIRST_RETRY_DELAY
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._paused.is_set():
                delay = self.renew_interval
                continue
            try:
                self.renew_once()
            except NetK8sError as exc:
                log.warning("node %s: failed to renew lease: %s", self.node_name, exc)
                delay = min(retry, self.renew_interval)
                retry *= 2
                continue
            retry = _FIRST_RETRY_DELAY
            delay = self.renew_interval
