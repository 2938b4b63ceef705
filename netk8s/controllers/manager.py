"""The controller manager: starts and stops every cluster-level controller."""

from __future__ import annotations

import ipaddress

from netk8s.client.controller import Controller
from netk8s.client.rest import ApiClient
from netk8s.controllers.deployment import DeploymentController
from netk8s.controllers.endpoints import EndpointsController
from netk8s.controllers.endpointslice import EndpointSliceController
from netk8s.controllers.garbagecollector import GarbageCollector
from netk8s.controllers.namespace import NamespaceController
from netk8s.controllers.nodeipam import NodeIpamController
from netk8s.controllers.nodelifecycle import NodeLifecycleController
from netk8s.controllers.replicaset import ReplicaSetController
from netk8s.controllers.serviceaccounts import ServiceAccountsController
from netk8s.topology import ControlPlaneSpec


class ControllerManager:
    def __init__(self, client: ApiClient, pod_subnet: ipaddress.IPv4Network,
                 timings: ControlPlaneSpec | None = None) -> None:
        timings = timings or ControlPlaneSpec()
        self.controllers: list[Controller] = [
            NodeIpamController(client, pod_subnet),
            DeploymentController(client),
            ReplicaSetController(client),
            EndpointSliceController(client),
            EndpointsController(client),
            GarbageCollector(client),
            NamespaceController(client),
            ServiceAccountsController(client),
            NodeLifecycleController(client, grace_period=timings.node_monitor_grace_period,
                                    eviction_timeout=timings.pod_eviction_timeout),
        ]

    def start(self) -> None:
        for controller in self.controllers:
            controller.start()

    def stop(self) -> None:
        for controller in self.controllers:
            controller.stop()
        for controller in self.controllers:
            controller.join()
