"""Kubernetes Events, recorded the way client-go's EventRecorder does it.

``recorder.event(obj, "Normal", "Scheduled", "Successfully assigned ...")``
returns at once; a background thread writes core/v1 Events named
``<object>.<hex nanoseconds>``, and a repeat of the same (object, type,
reason, message) within ten minutes bumps ``count`` and ``lastTimestamp`` of
the existing Event instead of creating another, as the event correlator does.
``kubectl describe`` lists them through the ``involvedObject.*`` field selectors.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from netk8s.api import meta
from netk8s.api.resources import EVENTS
from netk8s.client.rest import ApiClient
from netk8s.errors import NetK8sError

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
_DEDUP_WINDOW = 600.0
_MAX_BACKLOG = 1000


@dataclass
class _Seen:
    name: str
    namespace: str
    count: int
    at: float


def object_reference(obj: dict) -> dict:
    md = obj.get("metadata") or {}
    ref = {"kind": obj.get("kind", ""), "name": md.get("name", ""), "uid": md.get("uid", ""),
           "apiVersion": obj.get("apiVersion", ""), "resourceVersion": md.get("resourceVersion", "")}
    if md.get("namespace"):
        ref["namespace"] = md["namespace"]
    return ref


class EventRecorder:
    def __init__(self, client: ApiClient, component: str, host: str = "") -> None:
        self.client = client
        self.component = component
        self.host = host
        self._queue: queue.Queue[tuple[dict, str, str, str, str] | None] = queue.Queue()
        self._seen: dict[tuple[str, str, str, str], _Seen] = {}
        self._thread = threading.Thread(target=self._run, name=f"events-{component}", daemon=True)
        self._thread.start()

    def event(self, obj: dict, event_type: str, reason: str, message: str) -> None:
        """Record an event about ``obj`` (asynchronously; never raises)."""
        if self._queue.qsize() >= _MAX_BACKLOG:
            log.debug("event backlog full; dropping %s %s", reason, message)
            return
        self._queue.put((obj, event_type, reason, message, meta.now()))

    def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write(*item)
            except NetK8sError as exc:
                log.debug("recording event failed: %s", exc)

    def _write(self, obj: dict, event_type: str, reason: str, message: str, stamp: str) -> None:
        ref = object_reference(obj)
        namespace = ref.get("namespace") or "default"
        key = (ref["uid"] or f"{namespace}/{ref['name']}", event_type, reason, message)
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen.at < _DEDUP_WINDOW:
            seen.count += 1
            seen.at = now
            try:
                self.client.patch(EVENTS, seen.name, {"count": seen.count, "lastTimestamp": stamp},
                                  seen.namespace)
                return
            except NetK8sError:
                pass  # expired or deleted: create a fresh one
        name = f"{ref['name']}.{time.time_ns():x}"
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": ref, "reason": reason, "message": message, "type": event_type,
            "source": {"component": self.component, **({"host": self.host} if self.host else {})},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.host or self.component,
        }
        self.client.create(EVENTS, event, namespace)
        self._seen[key] = _Seen(name, namespace, 1, now)
        if len(self._seen) > 4096:
            cutoff = now - _DEDUP_WINDOW
            self._seen = {k: v for k, v in self._seen.items() if v.at >= cutoff}
