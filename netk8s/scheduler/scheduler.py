"""The scheduler process: watch unscheduled pods, pick nodes, bind through the API.

Pods it has just bound are "assumed" on their node until the pod informer
catches up, so a burst of replicas spreads instead of piling onto the node
that looked emptiest a moment ago. Unschedulable pods get a
``PodScheduled=False`` condition with kube-scheduler's message and are retried
when nodes change and with back-off.
"""

from __future__ import annotations

import logging
import threading

from netk8s.api import meta
from netk8s.api.resources import NODES, PODS
from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient, ignore_not_found
from netk8s.errors import ApiError
from netk8s.scheduler.core import build_node_states, schedule

log = logging.getLogger(__name__)

SCHEDULER_NAME = "default-scheduler"


class Scheduler(Controller):
    name = "scheduler"

    def __init__(self, client: ApiClient) -> None:
        super().__init__(client)
        self._assumed: dict[str, str] = {}  # pod key -> node, until the informer shows the binding
        self._lock = threading.Lock()

    def setup(self) -> None:
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
        if self._wants_scheduling(new):
            self.queue.add(key)

    def _on_node(self, event: str, old: dict | None, new: dict | None) -> None:
        # Node changes can make pending pods schedulable.
        for pod in self.pods.list():
            if self._wants_scheduling(pod):
                self.queue.add(meta.key_of(pod))

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
            self.queue.add_after(key, 5.0)
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

    def _mark_unschedulable(self, pod: dict, message: str) -> None:
        current = meta.get_condition(pod, "PodScheduled")
        if current and current.get("status") == "False" and current.get("message") == message:
            return
        conditions = meta.set_condition((pod.get("status") or {}).get("conditions") or [], "PodScheduled",
                                        "False", reason="Unschedulable", message=message)
        with ignore_not_found():
            self.client.patch(PODS, meta.name_of(pod), {"status": {"conditions": conditions}},
                              meta.namespace_of(pod), subresource="status")
        log.info("pod %s is unschedulable: %s", meta.key_of(pod), message)
