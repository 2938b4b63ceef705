"""Defaulting of API objects on create and update, as kube-apiserver does it.

Only fields the emulator uses or that ``kubectl get -o yaml`` users expect to
see are defaulted: Pod restartPolicy/dnsPolicy/grace period, container port
protocols, probe timings and HTTP scheme, the service account and priority
admission sets, Secret type, Service type/sessionAffinity/ipFamilies/targetPort, Deployment
strategy and revision history. Functions mutate the object passed in.
"""

from __future__ import annotations

from typing import Callable


def default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            if not isinstance(c, dict):
                continue
            image = str(c.get("image", ""))
            tag = image.rsplit("/", 1)[-1]
            c.setdefault("imagePullPolicy", "Always" if (":" not in tag or tag.endswith(":latest"))
                         else "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            for port in c.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
            for var in c.get("env") or []:
                field_ref = (var.get("valueFrom") or {}).get("fieldRef") if isinstance(var, dict) else None
                if isinstance(field_ref, dict):
                    field_ref.setdefault("apiVersion", "v1")  # SetDefaults_ObjectFieldSelector
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                if isinstance(c.get(kind), dict):
                    default_probe(c[kind])


def default_probe(probe: dict) -> None:
    """SetDefaults_Probe and SetDefaults_HTTPGetAction (what ``kubectl describe`` shows as timeout=1s ...)."""
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    http_get = probe.get("httpGet")
    if isinstance(http_get, dict):
        http_get.setdefault("path", "/")
        http_get.setdefault("scheme", "HTTP")


def default_pod(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    default_pod_spec(spec)
    # What kube-apiserver's admission adds to a pod (not to templates): the ServiceAccount plugin
    # names the namespace's default account, the Priority plugin the default priority.
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    if not spec.get("priorityClassName"):
        spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")


def default_secret(obj: dict) -> None:
    obj.setdefault("type", "Opaque")


def default_service(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    if spec["type"] != "ExternalName":
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("ipFamilies", ["IPv4"])
    if spec["type"] in ("NodePort", "LoadBalancer") or spec.get("externalIPs"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec.get("sessionAffinity") == "ClientIP":
        spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {}).setdefault("timeoutSeconds", 10800)
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "targetPort" not in port and "port" in port:
                port["targetPort"] = port["port"]
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def _default_template(spec: dict) -> None:
    template = spec.setdefault("template", {})
    if isinstance(template, dict):
        default_pod_spec(template.setdefault("spec", {}))


def default_deployment(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _default_template(spec)


def default_replicaset(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    _default_template(spec)


def default_namespace(obj: dict) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")
    labels = obj.setdefault("metadata", {}).setdefault("labels", {})
    labels.setdefault("kubernetes.io/metadata.name", obj["metadata"].get("name", ""))


DEFAULTERS: dict[str, Callable[[dict], None]] = {
    "Pod": default_pod,
    "Service": default_service,
    "Deployment": default_deployment,
    "ReplicaSet": default_replicaset,
    "Namespace": default_namespace,
    "Secret": default_secret,
}


def apply_defaults(kind: str, obj: dict) -> None:
    defaulter = DEFAULTERS.get(kind)
    if defaulter:
        defaulter(obj)
