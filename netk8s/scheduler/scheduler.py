"""The scheduler process: watch unscheduled pods, pick nodes, bind through the API.

Pods it has just bound are "assumed" on their node until the pod informer
catches up, so a burst of replicas spreads instead of piling onto the node
that looked emptiest a moment ago. Unschedulable pods get a
``PodScheduled=False`` condition with kube-scheduler's message and are retried
when nodes change, when a bound pod goes away (freeing its node) and with
back-off. Events are recorded as kube-scheduler records them (component
``default-scheduler``): ``Normal Scheduled`` after each binding and
``Warning FailedScheduling`` whenever a pod's failure message changes.
"""

from __future__ import annotations

import logging
import threading

from netk8s.api import meta
from netk8s.api.resources import NODES, PODS
from netk8s.client.controller import Controller
from netk8s.client.events import NORMAL, WARNING, EventRecorder
from netk8s.client.rest import ApiClient, ignore_not_found
from netk8s.errors import ApiError
from netk8s.scheduler.core import build_node_states, schedule

log = logging.getLogger(__name__)

SCHEDULER_NAME = "default-scheduler"
UNSCHEDULABLE_RETRY_SECONDS = 5.0


class Scheduler(Controller):
    name = "scheduler"

    def __init__(self, client: ApiClient) -> None:
        super().__init__(client)
        self._assumed: dict[str, str] = {}  # pod key -> node, until the informer shows the binding
        self._lock = threading.Lock()
        self._failures: dict[str, str] = {}  # pod key -> last FailedScheduling message recorded
        self.recorder: EventRecorder | None = None

    def setup(self) -> None:
        self.recorder = EventRecorder(self.client, SCHEDULER_NAME)
        self.pods = self.informer(PODS)
        self.nodes = self.informer(NODES)
        self.pods.add_handler(self._on_pod)
        self.nodes.add_handler(self._on_node)

    def _wants_scheduling(self, pod: dict | None) -> bool:
        if pod is None:
            return False
        spec = pod.get("spec") or {}
        return not spec.get("nodeName") and spec.get("schedulerName", SCHEDULER_NAME) == SCHEDULER_NAME \
            and not (pod.get("metadata") or {}).get("deletionTimestamp")

    def _on_pod(self, event: str, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        key = meta.key_of(obj)
        if new is None or (new.get("spec") or {}).get("nodeName"):
            with self._lock:
                self._assumed.pop(key, None)
                self._failures.pop(key, None)
        if self._wants_scheduling(new):
            self.queue.add(key)
        if old is not None and (old.get("spec") or {}).get("nodeName") and self._frees_node(old, new):
            self._requeue_pending()

    @staticmethod
    def _frees_node(old: dict, new: dict | None) -> bool:
        """A bound pod was deleted or finished: its node has room again."""
        if new is None:
            return True
        done = ("Succeeded", "Failed")
        return (new.get("status") or {}).get("phase") in done and (old.get("status") or {}).get("phase") not in done

    def _requeue_pending(self) -> None:
        for pod in self.pods.list():
            if self._wants_scheduling(pod):
                self.queue.add(meta.key_of(pod))

    def _on_node(self, event: str, old: dict | None, new: dict | None) -> None:
        # Node changes can make pending pods schedulable.
        self._requeue_pending()

    def stop(self) -> None:
        super().stop()
        if self.recorder is not None:
            self.recorder.stop()

    def sync(self, key: str) -> None:
        pod = self.pods.get(key)
        if not self._wants_scheduling(pod):
            return
        assert pod is not None
        with self._lock:
            if key in self._assumed:
                return
            assumed = dict(self._assumed)
        pods = []
        for p in self.pods.list():
            pk = meta.key_of(p)
            if pk in assumed and not (p.get("spec") or {}).get("nodeName"):
                p = dict(p, spec=dict(p.get("spec") or {}, nodeName=assumed[pk]))
            pods.append(p)
        decision = schedule(pod, build_node_states(self.nodes.list(), pods))
        namespace, name = meta.namespace_of(pod), meta.name_of(pod)
        if decision.node_name is None:
            self._mark_unschedulable(pod, decision.message)
            self.queue.add_after(key, UNSCHEDULABLE_RETRY_SECONDS)
            return
        with self._lock:
            self._assumed[key] = decision.node_name
        try:
            self.client.bind(namespace, name, decision.node_name)
        except ApiError as exc:
            with self._lock:
                self._assumed.pop(key, None)
            if exc.code in (404, 409):  # deleted, or bound by someone else meanwhile
                return
            raise
        log.info("bound %s to %s", key, decision.node_name)
        self._event(pod, NORMAL, "Scheduled", f"Successfully assigned {namespace}/{name} to {decision.node_name}")

    def _event(self, pod: dict, event_type: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder.event(dict(pod, apiVersion=pod.get("apiVersion") or "v1", kind=pod.get("kind") or "Pod"),
                                event_type, reason, message)

    def _mark_unschedulable(self, pod: dict, message: str) -> None:
        """Set PodScheduled=False/Unschedulable and record FailedScheduling, once per distinct message."""
        key = meta.key_of(pod)
        with self._lock:
            if self._failures.get(key) == message:
                return
        current = meta.get_condition(pod, "PodScheduled")
        if not (current and current.get("status") == "False" and current.get("message") == message):
            conditions = meta.set_condition((pod.get("status") or {}).get("conditions") or [], "PodScheduled",
                                            "False", reason="Unschedulable", message=message)
            with ignore_not_found():
                self.client.patch(PODS, meta.name_of(pod), {"status": {"conditions": conditions}},
                                  meta.namespace_of(pod), subresource="status")
            log.info("pod %s is unschedulable: %s", key, message)
            self._event(pod, WARNING, "FailedScheduling", message)
        with self._lock:
            self._failures[key] = message
