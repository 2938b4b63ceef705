"""The known fields of every kind netk8s serves: one table, Kubernetes 1.32 shapes.

The table describes each structure (``io.k8s.api.core.v1.PodSpec``,
``io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta``, ...) as its fields, each
with a type (string, integer, boolean, a named structure, array of X, map of X,
int-or-string, quantity, time, "any" for free-form) and the list annotations
strategic merge patch and server-side apply read (patch merge key, patch
strategy, list type). It is written by hand from the Kubernetes 1.32 API
reference. Three consumers read it:

- strict field validation (``unknown_fields``/``strict_error``): the API server
  rejects (``fieldValidation=Strict``) or warns about fields not in the table;
- the OpenAPI v2/v3 documents kubectl fetches (``netk8s.apiserver.openapi``);
- patch code that needs a list's merge key at a path (``list_patch_meta``).

Pure data and pure functions; no I/O.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Iterator, Mapping, Sequence, Union

log = logging.getLogger(__name__)

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_PACKAGES: dict[str, str] = {
    "meta.v1": META,
    "core.v1": "io.k8s.api.core.v1",
    "apps.v1": "io.k8s.api.apps.v1",
    "discovery.v1": "io.k8s.api.discovery.v1",
    "networking.v1": "io.k8s.api.networking.v1",
    "coordination.v1": "io.k8s.api.coordination.v1",
}


class TypeKind(str, Enum):
    """What a field holds."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    INT_OR_STRING = "int-or-string"
    QUANTITY = "quantity"
    TIME = "time"              # metav1.Time: RFC 3339, second precision
    MICRO_TIME = "micro-time"  # metav1.MicroTime: RFC 3339, microsecond precision
    BYTES = "bytes"            # base64 in JSON
    ANY = "any"                # free-form JSON object
    OBJECT = "object"          # a named structure of this table
    ARRAY = "array"
    MAP = "map"                # string keys


@dataclass(frozen=True)
class FieldType:
    kind: TypeKind
    ref: str = ""                    # OBJECT: full structure name
    item: FieldType | None = None    # ARRAY/MAP: element type
    format: str = ""                 # INTEGER: int32/int64; NUMBER: double

    def describe(self) -> str:
        """Human text: ``string``, ``array of Container``, ``map of string``."""
        if self.kind is TypeKind.OBJECT:
            return self.ref.rsplit(".", 1)[-1]
        if self.kind in (TypeKind.ARRAY, TypeKind.MAP) and self.item is not None:
            word = "array" if self.kind is TypeKind.ARRAY else "map"
            return f"{word} of {self.item.describe()}"
        return self.kind.value


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    required: bool = False
    description: str = ""
    patch_merge_key: str = ""
    patch_strategy: str = ""                # "merge", "retainKeys", "merge,retainKeys"
    list_type: str = ""                     # "atomic", "set", "map"
    list_map_keys: tuple[str, ...] = ()
    map_type: str = ""                      # "atomic" for maps replaced whole


@dataclass(frozen=True)
class Structure:
    name: str                               # io.k8s.api.core.v1.PodSpec
    description: str
    fields: Mapping[str, FieldSpec]
    map_type: str = ""                      # x-kubernetes-map-type of the structure itself

    @property
    def required(self) -> list[str]:
        return sorted(f.name for f in self.fields.values() if f.required)


# --- the table's little language ----------------------------------------------------------
#
# A field is written as a type expression: "string", "int32", "int64", "boolean", "number",
# "int-or-string", "quantity", "time", "micro-time", "bytes", "any", a structure name
# ("Container", resolved in the structure's own package first, then core.v1, then meta.v1,
# or qualified: "core.v1.ObjectReference"), "[]T" (array) or "{}T" (map). A trailing "!"
# marks the field required. List annotations come from _keyed/_atomic/_set.

_PRIMITIVES: dict[str, FieldType] = {
    "string": FieldType(TypeKind.STRING),
    "int32": FieldType(TypeKind.INTEGER, format="int32"),
    "int64": FieldType(TypeKind.INTEGER, format="int64"),
    "boolean": FieldType(TypeKind.BOOLEAN),
    "number": FieldType(TypeKind.NUMBER, format="double"),
    "int-or-string": FieldType(TypeKind.INT_OR_STRING),
    "quantity": FieldType(TypeKind.QUANTITY),
    "time": FieldType(TypeKind.TIME),
    "micro-time": FieldType(TypeKind.MICRO_TIME),
    "bytes": FieldType(TypeKind.BYTES),
    "any": FieldType(TypeKind.ANY),
}


@dataclass(frozen=True)
class _F:
    """An unresolved field: type expression plus annotations."""

    expr: str
    merge_key: str = ""
    strategy: str = ""
    list_type: str = ""
    map_keys: tuple[str, ...] = ()
    map_type: str = ""
    description: str = ""


_FieldDef = Union[str, _F]


def _keyed(expr: str, key: str, *more_keys: str, strategy: str = "merge") -> _F:
    """A list strategic merge patch merges by ``key``; a map-type list for apply."""
    return _F(expr, merge_key=key, strategy=strategy, list_type="map", map_keys=(key, *more_keys))


def _atomic(expr: str) -> _F:
    return _F(expr, list_type="atomic")


def _set(expr: str, strategy: str = "") -> _F:
    return _F(expr, strategy=strategy, list_type="set")


def _atomic_map(expr: str) -> _F:
    return _F(expr, map_type="atomic")


_RAW: dict[str, tuple[str, str, dict[str, _FieldDef]]] = {}


def _s(name: str, description: str, fields: dict[str, _FieldDef], map_type: str = "") -> None:
    """Declare structure ``name`` ("core.v1.PodSpec")."""
    if name in _RAW:
        raise ValueError(f"structure {name} declared twice")
    _RAW[name] = (description, map_type, fields)


# Field groups shared by several structures.
_TYPED_META: dict[str, _FieldDef] = {"apiVersion": "string", "kind": "string"}
_OBJECT_META: dict[str, _FieldDef] = {**_TYPED_META, "metadata": "ObjectMeta"}
_HANDLER: dict[str, _FieldDef] = {"exec": "ExecAction", "httpGet": "HTTPGetAction",
                                  "tcpSocket": "TCPSocketAction"}
_KEY_ITEMS = _atomic("[]KeyToPath")

# --- meta.k8s.io/v1 -----------------------------------------------------------------------

_s("meta.v1.ObjectMeta", "Metadata every persisted object carries: identity, labels, annotations, "
   "ownership, finalizers and the server's bookkeeping.", {
       "name": "string",
       "generateName": "string",
       "namespace": "string",
       "selfLink": "string",
       "uid": "string",
       "resourceVersion": "string",
       "generation": "int64",
       "creationTimestamp": "time",
       "deletionTimestamp": "time",
       "deletionGracePeriodSeconds": "int64",
       "labels": "{}string",
       "annotations": "{}string",
       "ownerReferences": _keyed("[]OwnerReference", "uid"),
       "finalizers": _set("[]string", strategy="merge"),
       "managedFields": _atomic("[]ManagedFieldsEntry"),
   })
_s("meta.v1.OwnerReference", "Points at the object that owns this one (garbage collection).", {
    "apiVersion": "string!", "kind": "string!", "name": "string!", "uid": "string!",
    "controller": "boolean", "blockOwnerDeletion": "boolean",
}, map_type="atomic")
_s("meta.v1.ManagedFieldsEntry", "Which manager owns which fields, as server-side apply records it.", {
    "manager": "string", "operation": "string", "apiVersion": "string", "time": "time",
    "fieldsType": "string", "fieldsV1": "any", "subresource": "string",
})
_s("meta.v1.ListMeta", "Metadata of a list: its resource version and continuation token.", {
    "selfLink": "string", "resourceVersion": "string", "continue": "string", "remainingItemCount": "int64",
})
_s("meta.v1.LabelSelector", "Selects objects by labels: all matchLabels and all matchExpressions must hold.", {
    "matchLabels": "{}string",
    "matchExpressions": _atomic("[]LabelSelectorRequirement"),
}, map_type="atomic")
_s("meta.v1.LabelSelectorRequirement", "One label requirement: key, operator (In, NotIn, Exists, "
   "DoesNotExist) and values.", {
       "key": "string!", "operator": "string!", "values": _atomic("[]string"),
   })
_s("meta.v1.Condition", "A standard status condition.", {
    "type": "string!", "status": "string!", "observedGeneration": "int64", "lastTransitionTime": "time!",
    "reason": "string!", "message": "string!",
})
_s("meta.v1.Status", "The result of an operation that returns no object, or of a failed one.", {
    **_TYPED_META, "metadata": "ListMeta", "status": "string", "message": "string", "reason": "string",
    "details": "StatusDetails", "code": "int32",
})
_s("meta.v1.StatusDetails", "Extra data about a failure: the object concerned and the causes.", {
    "name": "string", "group": "string", "kind": "string", "uid": "string",
    "causes": _atomic("[]StatusCause"), "retryAfterSeconds": "int32",
})
_s("meta.v1.StatusCause", "One cause of a failure, with the field it concerns.", {
    "reason": "string", "message": "string", "field": "string",
})
_s("meta.v1.DeleteOptions", "Options of a delete: grace period, preconditions, propagation, dry run.", {
    **_TYPED_META, "gracePeriodSeconds": "int64", "preconditions": "Preconditions",
    "orphanDependents": "boolean", "propagationPolicy": "string", "dryRun": _atomic("[]string"),
    "ignoreStoreReadErrorWithClusterBreakingPotential": "boolean",
})
_s("meta.v1.Preconditions", "Conditions a delete checks before it proceeds.", {
    "uid": "string", "resourceVersion": "string",
})

# --- core/v1: Pod and its parts -----------------------------------------------------------

_s("core.v1.Pod", "A group of containers sharing a network namespace, scheduled onto one node.", {
    **_OBJECT_META, "spec": "PodSpec", "status": "PodStatus",
})
_s("core.v1.PodTemplateSpec", "The pod a workload controller creates: metadata and spec.", {
    "metadata": "ObjectMeta", "spec": "PodSpec",
})
_s("core.v1.PodSpec", "The desired state of a pod: containers, volumes, scheduling and networking.", {
    "volumes": _keyed("[]Volume", "name", strategy="merge,retainKeys"),
    "initContainers": _keyed("[]Container", "name"),
    "containers": _keyed("[]Container!", "name"),
    "ephemeralContainers": _keyed("[]EphemeralContainer", "name"),
    "restartPolicy": "string",
    "terminationGracePeriodSeconds": "int64",
    "activeDeadlineSeconds": "int64",
    "dnsPolicy": "string",
    "nodeSelector": _atomic_map("{}string"),
    "serviceAccountName": "string",
    "serviceAccount": "string",
    "automountServiceAccountToken": "boolean",
    "nodeName": "string",
    "hostNetwork": "boolean",
    "hostPID": "boolean",
    "hostIPC": "boolean",
    "shareProcessNamespace": "boolean",
    "securityContext": "PodSecurityContext",
    "imagePullSecrets": _keyed("[]LocalObjectReference", "name"),
    "hostname": "string",
    "subdomain": "string",
    "affinity": "Affinity",
    "schedulerName": "string",
    "tolerations": _atomic("[]Toleration"),
    "hostAliases": _keyed("[]HostAlias", "ip"),
    "priorityClassName": "string",
    "priority": "int32",
    "dnsConfig": "PodDNSConfig",
    "readinessGates": _atomic("[]PodReadinessGate"),
    "runtimeClassName": "string",
    "enableServiceLinks": "boolean",
    "preemptionPolicy": "string",
    "overhead": "{}quantity",
    "topologySpreadConstraints": _keyed("[]TopologySpreadConstraint", "topologyKey", "whenUnsatisfiable"),
    "setHostnameAsFQDN": "boolean",
    "os": "PodOS",
    "hostUsers": "boolean",
    "schedulingGates": _keyed("[]PodSchedulingGate", "name"),
    "resourceClaims": _keyed("[]PodResourceClaim", "name", strategy="merge,retainKeys"),
    "resources": "ResourceRequirements",
})

_CONTAINER: dict[str, _FieldDef] = {
    "name": "string!",
    "image": "string",
    "command": _atomic("[]string"),
    "args": _atomic("[]string"),
    "workingDir": "string",
    "ports": _keyed("[]ContainerPort", "containerPort", "protocol"),
    "envFrom": _atomic("[]EnvFromSource"),
    "env": _keyed("[]EnvVar", "name"),
    "resources": "ResourceRequirements",
    "resizePolicy": _atomic("[]ContainerResizePolicy"),
    "restartPolicy": "string",
    "volumeMounts": _keyed("[]VolumeMount", "mountPath"),
    "volumeDevices": _keyed("[]VolumeDevice", "devicePath"),
    "livenessProbe": "Probe",
    "readinessProbe": "Probe",
    "startupProbe": "Probe",
    "lifecycle": "Lifecycle",
    "terminationMessagePath": "string",
    "terminationMessagePolicy": "string",
    "imagePullPolicy": "string",
    "securityContext": "SecurityContext",
    "stdin": "boolean",
    "stdinOnce": "boolean",
    "tty": "boolean",
}
_s("core.v1.Container", "One container of a pod: image, command, ports, environment, resources, "
   "probes and mounts.", _CONTAINER)
_s("core.v1.EphemeralContainer", "A container added to a running pod for debugging.", {
    **_CONTAINER, "targetContainerName": "string",
})
_s("core.v1.ContainerPort", "A port a container listens on.", {
    "name": "string", "hostPort": "int32", "containerPort": "int32!", "protocol": "string", "hostIP": "string",
})
_s("core.v1.EnvFromSource", "Imports every key of a ConfigMap or Secret as environment variables.", {
    "prefix": "string", "configMapRef": "ConfigMapEnvSource", "secretRef": "SecretEnvSource",
})
_s("core.v1.ConfigMapEnvSource", "The ConfigMap whose keys become environment variables.", {
    "name": "string", "optional": "boolean",
})
_s("core.v1.SecretEnvSource", "The Secret whose keys become environment variables.", {
    "name": "string", "optional": "boolean",
})
_s("core.v1.EnvVar", "One environment variable: a literal value or a reference.", {
    "name": "string!", "value": "string", "valueFrom": "EnvVarSource",
})
_s("core.v1.EnvVarSource", "Where an environment variable's value comes from.", {
    "fieldRef": "ObjectFieldSelector", "resourceFieldRef": "ResourceFieldSelector",
    "configMapKeyRef": "ConfigMapKeySelector", "secretKeyRef": "SecretKeySelector",
})
_s("core.v1.ObjectFieldSelector", "A field of the pod, by path (metadata.name, status.podIP, ...).", {
    "apiVersion": "string", "fieldPath": "string!",
}, map_type="atomic")
_s("core.v1.ResourceFieldSelector", "A container resource (limits.cpu, requests.memory, ...).", {
    "containerName": "string", "resource": "string!", "divisor": "quantity",
}, map_type="atomic")
_s("core.v1.ConfigMapKeySelector", "One key of a ConfigMap.", {
    "name": "string", "key": "string!", "optional": "boolean",
}, map_type="atomic")
_s("core.v1.SecretKeySelector", "One key of a Secret.", {
    "name": "string", "key": "string!", "optional": "boolean",
}, map_type="atomic")
_s("core.v1.ResourceRequirements", "Compute resources: limits, requests and dynamic resource claims.", {
    "limits": "{}quantity", "requests": "{}quantity", "claims": _keyed("[]ResourceClaim", "name"),
})
_s("core.v1.ResourceClaim", "A pod resource claim a container uses.", {
    "name": "string!", "request": "string",
})
_s("core.v1.ContainerResizePolicy", "How a container reacts to an in-place resize of one resource.", {
    "resourceName": "string!", "restartPolicy": "string!",
})
_s("core.v1.VolumeMount", "Where a volume is mounted in a container.", {
    "name": "string!", "readOnly": "boolean", "recursiveReadOnly": "string", "mountPath": "string!",
    "subPath": "string", "mountPropagation": "string", "subPathExpr": "string",
})
_s("core.v1.VolumeDevice", "A raw block volume exposed to a container as a device.", {
    "name": "string!", "devicePath": "string!",
})
_s("core.v1.Probe", "A periodic health check of a container and its thresholds.", {
    **_HANDLER, "grpc": "GRPCAction",
    "initialDelaySeconds": "int32", "timeoutSeconds": "int32", "periodSeconds": "int32",
    "successThreshold": "int32", "failureThreshold": "int32", "terminationGracePeriodSeconds": "int64",
})
_s("core.v1.ExecAction", "Run a command in the container; exit status 0 is success.", {
    "command": _atomic("[]string"),
})
_s("core.v1.HTTPGetAction", "An HTTP GET; a 2xx or 3xx answer is success.", {
    "path": "string", "port": "int-or-string!", "host": "string", "scheme": "string",
    "httpHeaders": _atomic("[]HTTPHeader"),
})
_s("core.v1.HTTPHeader", "One HTTP header of a probe request.", {"name": "string!", "value": "string!"})
_s("core.v1.TCPSocketAction", "Open a TCP connection; connecting is success.", {
    "port": "int-or-string!", "host": "string",
})
_s("core.v1.GRPCAction", "A gRPC health check.", {"port": "int32!", "service": "string"})
_s("core.v1.Lifecycle", "Actions run right after a container starts and before it stops.", {
    "postStart": "LifecycleHandler", "preStop": "LifecycleHandler",
})
_s("core.v1.LifecycleHandler", "One lifecycle action.", {**_HANDLER, "sleep": "SleepAction"})
_s("core.v1.SleepAction", "Sleep for a number of seconds.", {"seconds": "int64!"})
_s("core.v1.SecurityContext", "Security settings of one container.", {
    "capabilities": "Capabilities", "privileged": "boolean", "seLinuxOptions": "SELinuxOptions",
    "windowsOptions": "WindowsSecurityContextOptions", "runAsUser": "int64", "runAsGroup": "int64",
    "runAsNonRoot": "boolean", "readOnlyRootFilesystem": "boolean", "allowPrivilegeEscalation": "boolean",
    "procMount": "string", "seccompProfile": "SeccompProfile", "appArmorProfile": "AppArmorProfile",
})
_s("core.v1.Capabilities", "Linux capabilities added to or dropped from a container.", {
    "add": _atomic("[]string"), "drop": _atomic("[]string"),
})
_s("core.v1.SELinuxOptions", "An SELinux label.", {
    "user": "string", "role": "string", "type": "string", "level": "string",
})
_s("core.v1.WindowsSecurityContextOptions", "Windows-only security settings.", {
    "gmsaCredentialSpecName": "string", "gmsaCredentialSpec": "string", "runAsUserName": "string",
    "hostProcess": "boolean",
})
_s("core.v1.SeccompProfile", "The seccomp profile a container runs under.", {
    "type": "string!", "localhostProfile": "string",
})
_s("core.v1.AppArmorProfile", "The AppArmor profile a container runs under.", {
    "type": "string!", "localhostProfile": "string",
})
_s("core.v1.PodSecurityContext", "Security settings applied to every container of a pod.", {
    "seLinuxOptions": "SELinuxOptions", "windowsOptions": "WindowsSecurityContextOptions",
    "runAsUser": "int64", "runAsGroup": "int64", "runAsNonRoot": "boolean",
    "supplementalGroups": _atomic("[]int64"), "supplementalGroupsPolicy": "string", "fsGroup": "int64",
    "sysctls": _atomic("[]Sysctl"), "fsGroupChangePolicy": "string", "seccompProfile": "SeccompProfile",
    "appArmorProfile": "AppArmorProfile", "seLinuxChangePolicy": "string",
})
_s("core.v1.Sysctl", "A namespaced kernel parameter set for the pod.", {"name": "string!", "value": "string!"})
_s("core.v1.LocalObjectReference", "A reference by name to an object in the same namespace.", {
    "name": "string",
}, map_type="atomic")
_s("core.v1.ObjectReference", "A reference to any object, optionally to a field in it.", {
    "kind": "string", "namespace": "string", "name": "string", "uid": "string", "apiVersion": "string",
    "resourceVersion": "string", "fieldPath": "string",
}, map_type="atomic")
_s("core.v1.TypedLocalObjectReference", "A reference to an object of a given kind in the same namespace.", {
    "apiGroup": "string", "kind": "string!", "name": "string!",
}, map_type="atomic")
_s("core.v1.TypedObjectReference", "A reference to an object of a given kind, possibly in another namespace.", {
    "apiGroup": "string", "kind": "string!", "name": "string!", "namespace": "string",
})

# Scheduling.
_s("core.v1.Affinity", "Node affinity, pod affinity and pod anti-affinity rules.", {
    "nodeAffinity": "NodeAffinity", "podAffinity": "PodAffinity", "podAntiAffinity": "PodAntiAffinity",
})
_s("core.v1.NodeAffinity", "Rules that place a pod on nodes by node labels and fields.", {
    "requiredDuringSchedulingIgnoredDuringExecution": "NodeSelector",
    "preferredDuringSchedulingIgnoredDuringExecution": _atomic("[]PreferredSchedulingTerm"),
})
_s("core.v1.NodeSelector", "Terms ORed together; a node must match one of them.", {
    "nodeSelectorTerms": _atomic("[]NodeSelectorTerm!"),
}, map_type="atomic")
_s("core.v1.NodeSelectorTerm", "Requirements ANDed together on node labels and node fields.", {
    "matchExpressions": _atomic("[]NodeSelectorRequirement"),
    "matchFields": _atomic("[]NodeSelectorRequirement"),
}, map_type="atomic")
_s("core.v1.NodeSelectorRequirement", "One node requirement: key, operator (In, NotIn, Exists, "
   "DoesNotExist, Gt, Lt) and values.", {
       "key": "string!", "operator": "string!", "values": _atomic("[]string"),
   })
_s("core.v1.PreferredSchedulingTerm", "A weighted node preference.", {
    "weight": "int32!", "preference": "NodeSelectorTerm!",
})
_POD_AFFINITY: dict[str, _FieldDef] = {
    "requiredDuringSchedulingIgnoredDuringExecution": _atomic("[]PodAffinityTerm"),
    "preferredDuringSchedulingIgnoredDuringExecution": _atomic("[]WeightedPodAffinityTerm"),
}
_s("core.v1.PodAffinity", "Rules that co-locate a pod with other pods.", _POD_AFFINITY)
_s("core.v1.PodAntiAffinity", "Rules that keep a pod away from other pods.", _POD_AFFINITY)
_s("core.v1.PodAffinityTerm", "Pods (by selector and namespaces) that share or avoid a topology domain.", {
    "labelSelector": "LabelSelector", "namespaces": _atomic("[]string"), "topologyKey": "string!",
    "namespaceSelector": "LabelSelector", "matchLabelKeys": _atomic("[]string"),
    "mismatchLabelKeys": _atomic("[]string"),
})
_s("core.v1.WeightedPodAffinityTerm", "A weighted pod affinity term.", {
    "weight": "int32!", "podAffinityTerm": "PodAffinityTerm!",
})
_s("core.v1.Toleration", "Lets a pod schedule onto (or stay on) nodes with a matching taint.", {
    "key": "string", "operator": "string", "value": "string", "effect": "string",
    "tolerationSeconds": "int64",
})
_s("core.v1.TopologySpreadConstraint", "How evenly matching pods spread across a topology.", {
    "maxSkew": "int32!", "topologyKey": "string!", "whenUnsatisfiable": "string!",
    "labelSelector": "LabelSelector", "minDomains": "int32", "nodeAffinityPolicy": "string",
    "nodeTaintsPolicy": "string", "matchLabelKeys": _atomic("[]string"),
})
_s("core.v1.PodDNSConfig", "DNS settings merged into the pod's resolv.conf.", {
    "nameservers": _atomic("[]string"), "searches": _atomic("[]string"),
    "options": _atomic("[]PodDNSConfigOption"),
})
_s("core.v1.PodDNSConfigOption", "One resolver option.", {"name": "string", "value": "string"})
_s("core.v1.HostAlias", "Extra /etc/hosts entries for one IP.", {
    "ip": "string!", "hostnames": _atomic("[]string"),
})
_s("core.v1.PodReadinessGate", "An extra condition the pod needs to be Ready.", {"conditionType": "string!"})
_s("core.v1.PodOS", "The operating system the pod's containers need.", {"name": "string!"})
_s("core.v1.PodSchedulingGate", "A gate that holds the pod back from scheduling until removed.", {
    "name": "string!",
})
_s("core.v1.PodResourceClaim", "A dynamic resource claim of the pod.", {
    "name": "string!", "resourceClaimName": "string", "resourceClaimTemplateName": "string",
})

# Volumes.
_s("core.v1.Volume", "A named volume of a pod and its source.", {
    "name": "string!",
    "hostPath": "HostPathVolumeSource",
    "emptyDir": "EmptyDirVolumeSource",
    "secret": "SecretVolumeSource",
    "configMap": "ConfigMapVolumeSource",
    "persistentVolumeClaim": "PersistentVolumeClaimVolumeSource",
    "downwardAPI": "DownwardAPIVolumeSource",
    "projected": "ProjectedVolumeSource",
    "nfs": "NFSVolumeSource",
    "csi": "CSIVolumeSource",
    "ephemeral": "EphemeralVolumeSource",
    "image": "ImageVolumeSource",
    # Sources of in-tree storage drivers netk8s has no use for: known names, free-form contents.
    "gcePersistentDisk": "any",
    "awsElasticBlockStore": "any",
    "gitRepo": "any",
    "iscsi": "any",
    "glusterfs": "any",
    "rbd": "any",
    "flexVolume": "any",
    "cinder": "any",
    "cephfs": "any",
    "flocker": "any",
    "fc": "any",
    "azureFile": "any",
    "vsphereVolume": "any",
    "quobyte": "any",
    "azureDisk": "any",
    "photonPersistentDisk": "any",
    "portworxVolume": "any",
    "scaleIO": "any",
    "storageos": "any",
})
_s("core.v1.HostPathVolumeSource", "A file or directory of the node.", {"path": "string!", "type": "string"})
_s("core.v1.EmptyDirVolumeSource", "A scratch directory that lives as long as the pod.", {
    "medium": "string", "sizeLimit": "quantity",
})
_s("core.v1.SecretVolumeSource", "The keys of a Secret as files.", {
    "secretName": "string", "items": _KEY_ITEMS, "defaultMode": "int32", "optional": "boolean",
})
_s("core.v1.ConfigMapVolumeSource", "The keys of a ConfigMap as files.", {
    "name": "string", "items": _KEY_ITEMS, "defaultMode": "int32", "optional": "boolean",
})
_s("core.v1.KeyToPath", "Maps one key to a file path.", {"key": "string!", "path": "string!", "mode": "int32"})
_s("core.v1.PersistentVolumeClaimVolumeSource", "A PersistentVolumeClaim in the pod's namespace.", {
    "claimName": "string!", "readOnly": "boolean",
})
_s("core.v1.DownwardAPIVolumeSource", "Pod fields and container resources as files.", {
    "items": _atomic("[]DownwardAPIVolumeFile"), "defaultMode": "int32",
})
_s("core.v1.DownwardAPIVolumeFile", "One downward API file.", {
    "path": "string!", "fieldRef": "ObjectFieldSelector", "resourceFieldRef": "ResourceFieldSelector",
    "mode": "int32",
})
_s("core.v1.ProjectedVolumeSource", "Several sources projected into one directory.", {
    "sources": _atomic("[]VolumeProjection"), "defaultMode": "int32",
})
_s("core.v1.VolumeProjection", "One source of a projected volume.", {
    "secret": "SecretProjection", "downwardAPI": "DownwardAPIProjection", "configMap": "ConfigMapProjection",
    "serviceAccountToken": "ServiceAccountTokenProjection", "clusterTrustBundle": "ClusterTrustBundleProjection",
})
_s("core.v1.SecretProjection", "Secret keys in a projected volume.", {
    "name": "string", "items": _KEY_ITEMS, "optional": "boolean",
})
_s("core.v1.ConfigMapProjection", "ConfigMap keys in a projected volume.", {
    "name": "string", "items": _KEY_ITEMS, "optional": "boolean",
})
_s("core.v1.DownwardAPIProjection", "Downward API files in a projected volume.", {
    "items": _atomic("[]DownwardAPIVolumeFile"),
})
_s("core.v1.ServiceAccountTokenProjection", "A service account token in a projected volume.", {
    "audience": "string", "expirationSeconds": "int64", "path": "string!",
})
_s("core.v1.ClusterTrustBundleProjection", "ClusterTrustBundle certificates in a projected volume.", {
    "name": "string", "signerName": "string", "labelSelector": "LabelSelector", "optional": "boolean",
    "path": "string!",
})
_s("core.v1.NFSVolumeSource", "An NFS export.", {"server": "string!", "path": "string!", "readOnly": "boolean"})
_s("core.v1.CSIVolumeSource", "An ephemeral volume of a CSI driver.", {
    "driver": "string!", "readOnly": "boolean", "fsType": "string", "volumeAttributes": "{}string",
    "nodePublishSecretRef": "LocalObjectReference",
})
_s("core.v1.ImageVolumeSource", "The contents of an OCI image or artifact.", {
    "reference": "string", "pullPolicy": "string",
})
_s("core.v1.EphemeralVolumeSource", "A PersistentVolumeClaim created and deleted with the pod.", {
    "volumeClaimTemplate": "PersistentVolumeClaimTemplate",
})
_s("core.v1.PersistentVolumeClaimTemplate", "The claim an ephemeral volume creates.", {
    "metadata": "ObjectMeta", "spec": "PersistentVolumeClaimSpec!",
})
_s("core.v1.PersistentVolumeClaimSpec", "The storage a claim asks for.", {
    "accessModes": _atomic("[]string"), "selector": "LabelSelector", "resources": "VolumeResourceRequirements",
    "volumeName": "string", "storageClassName": "string", "volumeMode": "string",
    "dataSource": "TypedLocalObjectReference", "dataSourceRef": "TypedObjectReference",
    "volumeAttributesClassName": "string",
})
_s("core.v1.VolumeResourceRequirements", "Storage requests and limits of a claim.", {
    "limits": "{}quantity", "requests": "{}quantity",
})

# Pod status (never checked for unknown fields; described for OpenAPI and kubectl explain).
_s("core.v1.PodStatus", "The observed state of a pod.", {
    "phase": "string",
    "conditions": _keyed("[]PodCondition", "type"),
    "message": "string",
    "reason": "string",
    "nominatedNodeName": "string",
    "hostIP": "string",
    "hostIPs": _F("[]HostIP", merge_key="ip", strategy="merge", list_type="atomic"),
    "podIP": "string",
    "podIPs": _keyed("[]PodIP", "ip"),
    "startTime": "time",
    "initContainerStatuses": _atomic("[]ContainerStatus"),
    "containerStatuses": _atomic("[]ContainerStatus"),
    "qosClass": "string",
    "ephemeralContainerStatuses": _atomic("[]ContainerStatus"),
    "resize": "string",
    "resourceClaimStatuses": _keyed("[]PodResourceClaimStatus", "name", strategy="merge,retainKeys"),
})
_s("core.v1.PodCondition", "A condition of a pod (PodScheduled, Initialized, ContainersReady, Ready).", {
    "type": "string!", "status": "string!", "lastProbeTime": "time", "lastTransitionTime": "time",
    "reason": "string", "message": "string",
})
_s("core.v1.HostIP", "An IP address of the pod's node.", {"ip": "string!"})
_s("core.v1.PodIP", "An IP address of the pod.", {"ip": "string!"})
_s("core.v1.ContainerStatus", "The observed state of one container.", {
    "name": "string!", "state": "ContainerState", "lastState": "ContainerState", "ready": "boolean!",
    "restartCount": "int32!", "image": "string!", "imageID": "string!", "containerID": "string",
    "started": "boolean", "allocatedResources": "{}quantity", "resources": "ResourceRequirements",
    "volumeMounts": _keyed("[]VolumeMountStatus", "mountPath"), "user": "ContainerUser",
    "allocatedResourcesStatus": _keyed("[]ResourceStatus", "name"),
})
_s("core.v1.ContainerState", "Exactly one of waiting, running, terminated.", {
    "waiting": "ContainerStateWaiting", "running": "ContainerStateRunning",
    "terminated": "ContainerStateTerminated",
})
_s("core.v1.ContainerStateWaiting", "A container not yet running.", {"reason": "string", "message": "string"})
_s("core.v1.ContainerStateRunning", "A running container.", {"startedAt": "time"})
_s("core.v1.ContainerStateTerminated", "A container that exited.", {
    "exitCode": "int32!", "signal": "int32", "reason": "string", "message": "string", "startedAt": "time",
    "finishedAt": "time", "containerID": "string",
})
_s("core.v1.VolumeMountStatus", "The observed state of a volume mount.", {
    "name": "string!", "mountPath": "string!", "readOnly": "boolean", "recursiveReadOnly": "string",
})
_s("core.v1.ContainerUser", "The identity a container process runs with.", {"linux": "LinuxContainerUser"})
_s("core.v1.LinuxContainerUser", "Linux user and groups of a container's first process.", {
    "uid": "int64!", "gid": "int64!", "supplementalGroups": _atomic("[]int64"),
})
_s("core.v1.ResourceStatus", "Health of the devices behind one resource of a container.", {
    "name": "string!", "resources": _F("[]ResourceHealth", list_type="map", map_keys=("resourceID",)),
})
_s("core.v1.ResourceHealth", "Health of one device.", {"resourceID": "string!", "health": "string"})
_s("core.v1.PodResourceClaimStatus", "The ResourceClaim generated for a pod resource claim.", {
    "name": "string!", "resourceClaimName": "string",
})

# --- core/v1: the other kinds -------------------------------------------------------------

_s("core.v1.Service", "A stable virtual IP and DNS name in front of a set of pods.", {
    **_OBJECT_META, "spec": "ServiceSpec", "status": "ServiceStatus",
})
_s("core.v1.ServiceSpec", "The desired state of a Service: type, ports, selector, IPs, traffic policies.", {
    "ports": _keyed("[]ServicePort", "port", "protocol"),
    "selector": _atomic_map("{}string"),
    "clusterIP": "string",
    "clusterIPs": _atomic("[]string"),
    "type": "string",
    "externalIPs": _atomic("[]string"),
    "sessionAffinity": "string",
    "loadBalancerIP": "string",
    "loadBalancerSourceRanges": _atomic("[]string"),
    "externalName": "string",
    "externalTrafficPolicy": "string",
    "healthCheckNodePort": "int32",
    "publishNotReadyAddresses": "boolean",
    "sessionAffinityConfig": "SessionAffinityConfig",
    "ipFamilies": _atomic("[]string"),
    "ipFamilyPolicy": "string",
    "allocateLoadBalancerNodePorts": "boolean",
    "loadBalancerClass": "string",
    "internalTrafficPolicy": "string",
    "trafficDistribution": "string",
})
_s("core.v1.ServicePort", "One port of a Service and the pod port it forwards to.", {
    "name": "string", "protocol": "string", "appProtocol": "string", "port": "int32!",
    "targetPort": "int-or-string", "nodePort": "int32",
})
_s("core.v1.SessionAffinityConfig", "Session affinity settings.", {"clientIP": "ClientIPConfig"})
_s("core.v1.ClientIPConfig", "ClientIP session affinity settings.", {"timeoutSeconds": "int32"})
_s("core.v1.ServiceStatus", "The observed state of a Service.", {
    "loadBalancer": "LoadBalancerStatus", "conditions": _keyed("[]Condition", "type"),
})
_s("core.v1.LoadBalancerStatus", "The load balancer in front of a Service.", {
    "ingress": _atomic("[]LoadBalancerIngress"),
})
_s("core.v1.LoadBalancerIngress", "One ingress point of a load balancer.", {
    "ip": "string", "hostname": "string", "ipMode": "string", "ports": _atomic("[]PortStatus"),
})
_s("core.v1.PortStatus", "The state of one load-balancer port.", {
    "port": "int32!", "protocol": "string!", "error": "string",
})

_s("core.v1.Namespace", "A scope for names; most objects live in one.", {
    **_OBJECT_META, "spec": "NamespaceSpec", "status": "NamespaceStatus",
})
_s("core.v1.NamespaceSpec", "The desired state of a namespace.", {"finalizers": _atomic("[]string")})
_s("core.v1.NamespaceStatus", "The observed state of a namespace.", {
    "phase": "string", "conditions": _keyed("[]NamespaceCondition", "type"),
})
_s("core.v1.NamespaceCondition", "A condition of a namespace.", {
    "type": "string!", "status": "string!", "lastTransitionTime": "time", "reason": "string",
    "message": "string",
})

_s("core.v1.Node", "A machine (here: an emulated host) that runs pods.", {
    **_OBJECT_META, "spec": "NodeSpec", "status": "NodeStatus",
})
_s("core.v1.NodeSpec", "The desired state of a node: pod CIDRs, taints, schedulability.", {
    "podCIDR": "string", "podCIDRs": _set("[]string", strategy="merge"), "providerID": "string",
    "unschedulable": "boolean", "taints": _atomic("[]Taint"), "configSource": "NodeConfigSource",
    "externalID": "string",
})
_s("core.v1.Taint", "Repels pods that do not tolerate it.", {
    "key": "string!", "value": "string", "effect": "string!", "timeAdded": "time",
})
_s("core.v1.NodeConfigSource", "Deprecated dynamic kubelet configuration source.", {
    "configMap": "ConfigMapNodeConfigSource",
})
_s("core.v1.ConfigMapNodeConfigSource", "A ConfigMap holding kubelet configuration (deprecated).", {
    "namespace": "string!", "name": "string!", "uid": "string", "resourceVersion": "string",
    "kubeletConfigKey": "string!",
})
_s("core.v1.NodeStatus", "The observed state of a node.", {
    "capacity": "{}quantity", "allocatable": "{}quantity", "phase": "string",
    "conditions": _keyed("[]NodeCondition", "type"), "addresses": _keyed("[]NodeAddress", "type"),
    "daemonEndpoints": "NodeDaemonEndpoints", "nodeInfo": "NodeSystemInfo", "images": _atomic("[]ContainerImage"),
    "volumesInUse": _atomic("[]string"), "volumesAttached": _atomic("[]AttachedVolume"),
    "config": "NodeConfigStatus", "runtimeHandlers": _atomic("[]NodeRuntimeHandler"), "features": "NodeFeatures",
})
_s("core.v1.NodeCondition", "A condition of a node (Ready, MemoryPressure, ...).", {
    "type": "string!", "status": "string!", "lastHeartbeatTime": "time", "lastTransitionTime": "time",
    "reason": "string", "message": "string",
})
_s("core.v1.NodeAddress", "An address of a node.", {"type": "string!", "address": "string!"})
_s("core.v1.NodeDaemonEndpoints", "Ports of the daemons on a node.", {"kubeletEndpoint": "DaemonEndpoint"})
_s("core.v1.DaemonEndpoint", "A daemon's port.", {"Port": "int32!"})
_s("core.v1.NodeSystemInfo", "Versions and identifiers of a node.", {
    "machineID": "string!", "systemUUID": "string!", "bootID": "string!", "kernelVersion": "string!",
    "osImage": "string!", "containerRuntimeVersion": "string!", "kubeletVersion": "string!",
    "kubeProxyVersion": "string!", "operatingSystem": "string!", "architecture": "string!",
})
_s("core.v1.ContainerImage", "An image present on a node.", {"names": _atomic("[]string"), "sizeBytes": "int64"})
_s("core.v1.AttachedVolume", "A volume attached to a node.", {"name": "string!", "devicePath": "string!"})
_s("core.v1.NodeConfigStatus", "Status of dynamic kubelet configuration (deprecated).", {
    "assigned": "NodeConfigSource", "active": "NodeConfigSource", "lastKnownGood": "NodeConfigSource",
    "error": "string",
})
_s("core.v1.NodeRuntimeHandler", "A runtime handler of the node's container runtime.", {
    "name": "string", "features": "NodeRuntimeHandlerFeatures",
})
_s("core.v1.NodeRuntimeHandlerFeatures", "Features of a runtime handler.", {
    "recursiveReadOnlyMounts": "boolean", "userNamespaces": "boolean",
})
_s("core.v1.NodeFeatures", "Features the node's kubelet and runtime support.", {
    "supplementalGroupsPolicy": "boolean",
})

_s("core.v1.ConfigMap", "Non-secret configuration data as key-value pairs.", {
    **_OBJECT_META, "data": "{}string", "binaryData": "{}bytes", "immutable": "boolean",
})
_s("core.v1.Secret", "Sensitive data as key-value pairs (base64 in data, plain in stringData).", {
    **_OBJECT_META, "data": "{}bytes", "stringData": "{}string", "type": "string", "immutable": "boolean",
})
_s("core.v1.ServiceAccount", "An identity for processes running in pods.", {
    **_OBJECT_META, "secrets": _keyed("[]ObjectReference", "name"),
    "imagePullSecrets": _atomic("[]LocalObjectReference"), "automountServiceAccountToken": "boolean",
})
_s("core.v1.Event", "A report of something that happened to an object.", {
    **_TYPED_META, "metadata": "ObjectMeta!", "involvedObject": "ObjectReference!", "reason": "string",
    "message": "string", "source": "EventSource", "firstTimestamp": "time", "lastTimestamp": "time",
    "count": "int32", "type": "string", "eventTime": "micro-time", "series": "EventSeries", "action": "string",
    "related": "ObjectReference", "reportingComponent": "string", "reportingInstance": "string",
})
_s("core.v1.EventSource", "The component (and host) that reported an event.", {
    "component": "string", "host": "string",
})
_s("core.v1.EventSeries", "A series of repeated events.", {"count": "int32", "lastObservedTime": "micro-time"})
_s("core.v1.Endpoints", "The addresses and ports behind a Service (legacy form of EndpointSlices).", {
    **_OBJECT_META, "subsets": _atomic("[]EndpointSubset"),
})
_s("core.v1.EndpointSubset", "Addresses that share a set of ports.", {
    "addresses": _atomic("[]EndpointAddress"), "notReadyAddresses": _atomic("[]EndpointAddress"),
    "ports": _atomic("[]EndpointPort"),
})
_s("core.v1.EndpointAddress", "One endpoint's IP and the pod behind it.", {
    "ip": "string!", "hostname": "string", "nodeName": "string", "targetRef": "ObjectReference",
}, map_type="atomic")
_s("core.v1.EndpointPort", "One port of an endpoint subset.", {
    "name": "string", "port": "int32!", "protocol": "string", "appProtocol": "string",
}, map_type="atomic")

# --- apps/v1 ------------------------------------------------------------------------------

_s("apps.v1.Deployment", "Declarative updates of a replicated set of pods through ReplicaSets.", {
    **_OBJECT_META, "spec": "DeploymentSpec", "status": "DeploymentStatus",
})
_s("apps.v1.DeploymentSpec", "The desired state of a Deployment.", {
    "replicas": "int32", "selector": "LabelSelector!", "template": "PodTemplateSpec!",
    "strategy": _F("DeploymentStrategy", strategy="retainKeys"), "minReadySeconds": "int32",
    "revisionHistoryLimit": "int32", "paused": "boolean", "progressDeadlineSeconds": "int32",
})
_s("apps.v1.DeploymentStrategy", "How old pods are replaced by new ones (Recreate or RollingUpdate).", {
    "type": "string", "rollingUpdate": "RollingUpdateDeployment",
})
_s("apps.v1.RollingUpdateDeployment", "Rolling update bounds: pods unavailable and pods above replicas.", {
    "maxUnavailable": "int-or-string", "maxSurge": "int-or-string",
})
_s("apps.v1.DeploymentStatus", "The observed state of a Deployment.", {
    "observedGeneration": "int64", "replicas": "int32", "updatedReplicas": "int32", "readyReplicas": "int32",
    "availableReplicas": "int32", "unavailableReplicas": "int32",
    "conditions": _keyed("[]DeploymentCondition", "type"), "collisionCount": "int32",
})
_s("apps.v1.DeploymentCondition", "A condition of a Deployment (Available, Progressing, ...).", {
    "type": "string!", "status": "string!", "lastUpdateTime": "time", "lastTransitionTime": "time",
    "reason": "string", "message": "string",
})
_s("apps.v1.ReplicaSet", "Keeps a number of identical pods running.", {
    **_OBJECT_META, "spec": "ReplicaSetSpec", "status": "ReplicaSetStatus",
})
_s("apps.v1.ReplicaSetSpec", "The desired state of a ReplicaSet.", {
    "replicas": "int32", "minReadySeconds": "int32", "selector": "LabelSelector!",
    "template": "PodTemplateSpec",
})
_s("apps.v1.ReplicaSetStatus", "The observed state of a ReplicaSet.", {
    "replicas": "int32!", "fullyLabeledReplicas": "int32", "readyReplicas": "int32",
    "availableReplicas": "int32", "observedGeneration": "int64",
    "conditions": _keyed("[]ReplicaSetCondition", "type"),
})
_s("apps.v1.ReplicaSetCondition", "A condition of a ReplicaSet.", {
    "type": "string!", "status": "string!", "lastTransitionTime": "time", "reason": "string",
    "message": "string",
})

# --- discovery.k8s.io/v1 ------------------------------------------------------------------

_s("discovery.v1.EndpointSlice", "A slice of the endpoints behind a Service.", {
    **_OBJECT_META, "addressType": "string!", "endpoints": _atomic("[]Endpoint!"),
    "ports": _atomic("[]EndpointPort"),
})
_s("discovery.v1.Endpoint", "One backend: its addresses, conditions and where it runs.", {
    "addresses": _set("[]string!"), "conditions": "EndpointConditions", "hostname": "string",
    "targetRef": "ObjectReference", "deprecatedTopology": "{}string", "nodeName": "string", "zone": "string",
    "hints": "EndpointHints",
})
_s("discovery.v1.EndpointConditions", "Whether an endpoint is ready, serving, terminating.", {
    "ready": "boolean", "serving": "boolean", "terminating": "boolean",
})
_s("discovery.v1.EndpointHints", "Topology hints for routing to an endpoint.", {"forZones": _atomic("[]ForZone")})
_s("discovery.v1.ForZone", "A zone that should use an endpoint.", {"name": "string!"})
_s("discovery.v1.EndpointPort", "One port of the endpoints in a slice.", {
    "name": "string", "protocol": "string", "port": "int32", "appProtocol": "string",
}, map_type="atomic")

# --- networking.k8s.io/v1 -----------------------------------------------------------------

_s("networking.v1.NetworkPolicy", "Which traffic may reach and leave a set of pods.", {
    **_OBJECT_META, "spec": "NetworkPolicySpec",
})
_s("networking.v1.NetworkPolicySpec", "The pods a policy selects and the traffic it allows.", {
    "podSelector": "LabelSelector!", "ingress": _atomic("[]NetworkPolicyIngressRule"),
    "egress": _atomic("[]NetworkPolicyEgressRule"), "policyTypes": _atomic("[]string"),
})
_s("networking.v1.NetworkPolicyIngressRule", "Traffic allowed in: from these peers to these ports.", {
    "ports": _atomic("[]NetworkPolicyPort"), "from": _atomic("[]NetworkPolicyPeer"),
})
_s("networking.v1.NetworkPolicyEgressRule", "Traffic allowed out: to these peers on these ports.", {
    "ports": _atomic("[]NetworkPolicyPort"), "to": _atomic("[]NetworkPolicyPeer"),
})
_s("networking.v1.NetworkPolicyPort", "A port (or port range) and protocol.", {
    "protocol": "string", "port": "int-or-string", "endPort": "int32",
})
_s("networking.v1.NetworkPolicyPeer", "Pods, namespaces or an IP block.", {
    "podSelector": "LabelSelector", "namespaceSelector": "LabelSelector", "ipBlock": "IPBlock",
})
_s("networking.v1.IPBlock", "A CIDR, minus some sub-ranges.", {"cidr": "string!", "except": _atomic("[]string")})

# --- coordination.k8s.io/v1 ---------------------------------------------------------------

_s("coordination.v1.Lease", "A lease: leader election, node heartbeats.", {
    **_OBJECT_META, "spec": "LeaseSpec",
})
_s("coordination.v1.LeaseSpec", "Who holds the lease and until when.", {
    "holderIdentity": "string", "leaseDurationSeconds": "int32", "acquireTime": "micro-time",
    "renewTime": "micro-time", "leaseTransitions": "int32", "strategy": "string", "preferredHolder": "string",
})


# --- descriptions of the fields people explain most (kubectl explain) ----------------------

_DESCRIPTIONS: dict[str, str] = {
    "meta.v1.ObjectMeta.name": "The object's name, unique per kind in its namespace (or in the cluster).",
    "meta.v1.ObjectMeta.generateName": "A prefix the server completes with random characters when name is empty.",
    "meta.v1.ObjectMeta.namespace": "The namespace the object lives in; empty for cluster-scoped kinds.",
    "meta.v1.ObjectMeta.uid": "A unique id the server gives the object at creation; never reused.",
    "meta.v1.ObjectMeta.resourceVersion": "An opaque version that changes on every write; used for optimistic "
                                          "concurrency and to resume watches.",
    "meta.v1.ObjectMeta.generation": "A counter the server increments when the desired state (spec) changes.",
    "meta.v1.ObjectMeta.creationTimestamp": "When the server created the object (read-only).",
    "meta.v1.ObjectMeta.deletionTimestamp": "Set when deletion was requested; the object goes once its "
                                            "finalizers are removed.",
    "meta.v1.ObjectMeta.labels": "Key-value pairs that selectors (Services, Deployments, kubectl -l) match on.",
    "meta.v1.ObjectMeta.annotations": "Key-value pairs for tools and people; not used for selection.",
    "meta.v1.ObjectMeta.ownerReferences": "The objects this one depends on; it is garbage-collected when they go.",
    "meta.v1.ObjectMeta.finalizers": "Names that must all be removed before the object is deleted.",
    "core.v1.Pod.spec": "What the pod should run.",
    "core.v1.Pod.status": "What the pod is doing, as the kubelet reports it (read-only for users).",
    "core.v1.PodSpec.containers": "The containers of the pod; at least one.",
    "core.v1.PodSpec.initContainers": "Containers run one after another to completion before the containers "
                                      "start (restartPolicy Always makes one a sidecar).",
    "core.v1.PodSpec.volumes": "Volumes the containers can mount.",
    "core.v1.PodSpec.restartPolicy": "Always (default), OnFailure or Never: when the kubelet restarts "
                                     "exited containers.",
    "core.v1.PodSpec.nodeName": "The node the pod runs on; the scheduler sets it, or set it to skip scheduling.",
    "core.v1.PodSpec.nodeSelector": "Labels a node must have for the pod to be scheduled there.",
    "core.v1.PodSpec.hostNetwork": "Run in the node's network namespace instead of the pod's own.",
    "core.v1.PodSpec.dnsPolicy": "ClusterFirst (default), ClusterFirstWithHostNet, Default or None: "
                                 "where the pod's resolv.conf comes from.",
    "core.v1.PodSpec.serviceAccountName": "The ServiceAccount the pod runs as.",
    "core.v1.PodSpec.terminationGracePeriodSeconds": "Seconds between SIGTERM and SIGKILL when the pod is "
                                                     "deleted (default 30).",
    "core.v1.PodSpec.tolerations": "Taints this pod tolerates.",
    "core.v1.PodSpec.affinity": "Node and pod affinity rules for scheduling.",
    "core.v1.PodSpec.hostname": "The pod's hostname (default: the pod name).",
    "core.v1.PodSpec.subdomain": "With a headless Service of this name, gives the pod the DNS name "
                                 "<hostname>.<subdomain>.<namespace>.svc.<cluster domain>.",
    "core.v1.Container.name": "The container's name, unique in the pod.",
    "core.v1.Container.image": "The image to run (netk8s: netk8s/echo is built in; other images run "
                               "their command on the host, in the pod's network namespace).",
    "core.v1.Container.command": "The entrypoint, not run in a shell; replaces the image's ENTRYPOINT.",
    "core.v1.Container.args": "Arguments to the entrypoint; replaces the image's CMD.",
    "core.v1.Container.ports": "Ports the container listens on (informational; named ports can be a "
                               "Service's targetPort).",
    "core.v1.Container.env": "Environment variables.",
    "core.v1.Container.resources": "CPU, memory and other resources requested and limited.",
    "core.v1.Container.readinessProbe": "While it fails, the pod is not Ready and is removed from "
                                        "Service endpoints.",
    "core.v1.Container.livenessProbe": "When it fails, the kubelet restarts the container.",
    "core.v1.Container.startupProbe": "Holds the other probes back until it succeeds once.",
    "core.v1.Container.imagePullPolicy": "Always, IfNotPresent or Never.",
    "core.v1.ContainerPort.containerPort": "The port number in the pod's network namespace (1-65535).",
    "core.v1.ContainerPort.protocol": "TCP (default), UDP or SCTP.",
    "core.v1.ContainerPort.name": "A name for the port (IANA_SVC_NAME), which Services can target.",
    "core.v1.Probe.periodSeconds": "Seconds between probes (default 10).",
    "core.v1.Probe.initialDelaySeconds": "Seconds after the container starts before the first probe.",
    "core.v1.Probe.failureThreshold": "Consecutive failures that count as failed (default 3).",
    "core.v1.HTTPGetAction.port": "The port number or container port name to probe.",
    "core.v1.HTTPGetAction.path": "The HTTP path to request.",
    "core.v1.Service.spec": "How the Service is exposed and which pods it sends traffic to.",
    "core.v1.ServiceSpec.type": "ClusterIP (default), NodePort, LoadBalancer or ExternalName.",
    "core.v1.ServiceSpec.selector": "Pods with all these labels are the Service's endpoints.",
    "core.v1.ServiceSpec.ports": "The ports the Service exposes.",
    "core.v1.ServiceSpec.clusterIP": "The virtual IP, allocated from the service subnet; \"None\" makes a "
                                     "headless Service.",
    "core.v1.ServiceSpec.externalTrafficPolicy": "Cluster (default) or Local: whether traffic from outside "
                                                 "may be forwarded to other nodes (and SNATed).",
    "core.v1.ServiceSpec.internalTrafficPolicy": "Cluster (default) or Local: whether in-cluster traffic "
                                                 "only goes to endpoints on the client's node.",
    "core.v1.ServiceSpec.sessionAffinity": "None (default) or ClientIP: keep a client on one endpoint.",
    "core.v1.ServicePort.port": "The port the Service listens on at its cluster IP.",
    "core.v1.ServicePort.targetPort": "The pod port (number or container port name) traffic goes to; "
                                      "defaults to port.",
    "core.v1.ServicePort.nodePort": "The port on every node for NodePort and LoadBalancer Services "
                                    "(allocated from the node port range when unset).",
    "core.v1.ServicePort.protocol": "TCP (default), UDP or SCTP.",
    "apps.v1.Deployment.spec": "The pods the Deployment should run and how it rolls out changes.",
    "apps.v1.DeploymentSpec.replicas": "How many pods to run (default 1).",
    "apps.v1.DeploymentSpec.selector": "The label selector of the pods the Deployment manages; must match "
                                       "the template's labels and cannot change.",
    "apps.v1.DeploymentSpec.template": "The pod every replica is created from; changing it starts a rollout.",
    "apps.v1.DeploymentSpec.strategy": "How pods are replaced during a rollout.",
    "apps.v1.DeploymentSpec.revisionHistoryLimit": "How many old ReplicaSets to keep for rollback (default 10).",
    "apps.v1.DeploymentSpec.minReadySeconds": "Seconds a new pod must be Ready to count as available.",
    "apps.v1.DeploymentSpec.paused": "Stop rolling out template changes while true.",
    "apps.v1.DeploymentSpec.progressDeadlineSeconds": "Seconds without progress before the rollout is "
                                                      "reported as failed (default 600).",
    "apps.v1.ReplicaSetSpec.replicas": "How many pods to run (default 1).",
    "apps.v1.ReplicaSetSpec.selector": "The label selector of the pods the ReplicaSet counts.",
    "networking.v1.NetworkPolicySpec.podSelector": "The pods the policy applies to; {} selects every pod "
                                                   "in the namespace.",
    "networking.v1.NetworkPolicySpec.policyTypes": "Ingress, Egress or both: which directions the policy "
                                                   "restricts.",
}


# --- resolution ---------------------------------------------------------------------------

def _full_name(short: str) -> str:
    pkg, _, name = short.rpartition(".")
    return f"{_PACKAGES[pkg]}.{name}"


def _resolve_ref(name: str, home_pkg: str) -> str:
    if "." in name:
        return _full_name(name)
    for pkg in (home_pkg, "core.v1", "meta.v1"):
        if f"{pkg}.{name}" in _RAW:
            return _full_name(f"{pkg}.{name}")
    raise ValueError(f"unknown structure {name!r} referenced from package {home_pkg}")


def _parse_type(expr: str, home_pkg: str) -> FieldType:
    if expr.startswith("[]"):
        return FieldType(TypeKind.ARRAY, item=_parse_type(expr[2:], home_pkg))
    if expr.startswith("{}"):
        return FieldType(TypeKind.MAP, item=_parse_type(expr[2:], home_pkg))
    if expr in _PRIMITIVES:
        return _PRIMITIVES[expr]
    return FieldType(TypeKind.OBJECT, ref=_resolve_ref(expr, home_pkg))


def _build() -> dict[str, Structure]:
    structures: dict[str, Structure] = {}
    for short, (description, map_type, raw_fields) in _RAW.items():
        home_pkg = short.rpartition(".")[0]
        fields: dict[str, FieldSpec] = {}
        for name, definition in raw_fields.items():
            f = definition if isinstance(definition, _F) else _F(definition)
            expr = f.expr.replace("!", "")
            fields[name] = FieldSpec(
                name=name, type=_parse_type(expr, home_pkg), required="!" in f.expr,
                description=f.description or _DESCRIPTIONS.get(f"{short}.{name}", ""),
                patch_merge_key=f.merge_key, patch_strategy=f.strategy,
                list_type=f.list_type, list_map_keys=f.map_keys, map_type=f.map_type)
        structures[_full_name(short)] = Structure(_full_name(short), description, fields, map_type)
    dangling = []
    for key in _DESCRIPTIONS:
        owner, _, field_name = key.rpartition(".")
        if owner not in _RAW or field_name not in _RAW[owner][2]:
            dangling.append(key)
    if dangling:
        raise ValueError(f"descriptions of undeclared fields: {', '.join(dangling)}")
    return structures


STRUCTURES: dict[str, Structure] = _build()

# kind -> its top-level structure (the kinds of netk8s.api.resources.RESOURCES).
KINDS: dict[str, str] = {
    "Pod": "io.k8s.api.core.v1.Pod",
    "Service": "io.k8s.api.core.v1.Service",
    "Namespace": "io.k8s.api.core.v1.Namespace",
    "Node": "io.k8s.api.core.v1.Node",
    "ConfigMap": "io.k8s.api.core.v1.ConfigMap",
    "Secret": "io.k8s.api.core.v1.Secret",
    "ServiceAccount": "io.k8s.api.core.v1.ServiceAccount",
    "Event": "io.k8s.api.core.v1.Event",
    "Endpoints": "io.k8s.api.core.v1.Endpoints",
    "Deployment": "io.k8s.api.apps.v1.Deployment",
    "ReplicaSet": "io.k8s.api.apps.v1.ReplicaSet",
    "EndpointSlice": "io.k8s.api.discovery.v1.EndpointSlice",
    "NetworkPolicy": "io.k8s.api.networking.v1.NetworkPolicy",
    "Lease": "io.k8s.api.coordination.v1.Lease",
}


def kind_structure(kind: str) -> Structure | None:
    """The top-level structure of a kind, or None for a kind the table does not describe."""
    name = KINDS.get(kind)
    return STRUCTURES[name] if name else None


def referenced(names: Iterable[str]) -> list[str]:
    """``names`` and every structure they reach through their fields, in a stable order."""
    seen: dict[str, None] = {}
    stack = list(names)
    while stack:
        name = stack.pop(0)
        if name in seen:
            continue
        seen[name] = None
        for spec in STRUCTURES[name].fields.values():
            stack.extend(_refs_of(spec.type))
    return list(seen)


def _refs_of(ftype: FieldType) -> Iterator[str]:
    if ftype.kind is TypeKind.OBJECT:
        yield ftype.ref
    elif ftype.item is not None:
        yield from _refs_of(ftype.item)


# --- strict field validation ----------------------------------------------------------------

def unknown_fields(kind: str, obj: dict) -> list[str]:
    """Paths of the fields of ``obj`` that its kind's schema does not have, in document order.

    Paths read as Kubernetes prints them: ``spec.replica``,
    ``spec.template.spec.containers[0].imagePullPolicyy``, ``metadata.lables``. Only
    structures the table describes are descended into (free-form values are not);
    the top-level ``status`` is never checked; ``apiVersion``, ``kind`` and ``metadata``
    are always known. A kind the table does not describe has no unknown fields.
    """
    top = kind_structure(kind)
    if top is None or not isinstance(obj, dict):
        return []
    out: list[str] = []
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if key == "metadata":
            _check_value(FieldType(TypeKind.OBJECT, ref=f"{META}.ObjectMeta"), value, key, out)
            continue
        spec = top.fields.get(key)
        if spec is None:
            out.append(key)
        elif key != "status":
            _check_value(spec.type, value, key, out)
    return out


def _check_struct(struct: Structure, value: dict, path: str, out: list[str]) -> None:
    for key, item in value.items():
        child = f"{path}.{key}" if path else str(key)
        spec = struct.fields.get(key)
        if spec is None:
            out.append(child)
        else:
            _check_value(spec.type, item, child, out)


def _check_value(ftype: FieldType, value: object, path: str, out: list[str]) -> None:
    if ftype.kind is TypeKind.OBJECT and isinstance(value, dict):
        _check_struct(STRUCTURES[ftype.ref], value, path, out)
    elif ftype.kind is TypeKind.ARRAY and isinstance(value, list) and ftype.item is not None:
        for i, item in enumerate(value):
            _check_value(ftype.item, item, f"{path}[{i}]", out)
    elif ftype.kind is TypeKind.MAP and isinstance(value, dict) and ftype.item is not None:
        for key, item in value.items():
            _check_value(ftype.item, item, f"{path}.{key}", out)


def drop_unknown_fields(kind: str, obj: dict) -> dict:
    """A copy of ``obj`` without the fields ``unknown_fields`` reports.

    kube-apiserver decodes into typed structs, so with ``fieldValidation=Ignore`` or
    ``Warn`` unknown fields are silently not stored; netk8s stores dicts and needs this.
    """
    top = kind_structure(kind)
    if top is None or not isinstance(obj, dict):
        return copy.deepcopy(obj)
    out: dict = {}
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status") and (key != "status" or "status" in top.fields):
            out[key] = copy.deepcopy(value)
        elif key == "metadata":
            out[key] = _pruned(FieldType(TypeKind.OBJECT, ref=f"{META}.ObjectMeta"), value)
        elif key in top.fields:
            out[key] = _pruned(top.fields[key].type, value)
    return out


def _pruned(ftype: FieldType, value: object) -> object:
    if ftype.kind is TypeKind.OBJECT and isinstance(value, dict):
        fields = STRUCTURES[ftype.ref].fields
        return {k: _pruned(fields[k].type, v) for k, v in value.items() if k in fields}
    if ftype.kind is TypeKind.ARRAY and isinstance(value, list) and ftype.item is not None:
        return [_pruned(ftype.item, item) for item in value]
    if ftype.kind is TypeKind.MAP and isinstance(value, dict) and ftype.item is not None:
        return {k: _pruned(ftype.item, v) for k, v in value.items()}
    return copy.deepcopy(value)


def strict_error(paths: Sequence[str]) -> str:
    """Kubernetes' text for a Strict field validation failure.

    ``strict decoding error: unknown field "spec.replica", unknown field "spec.foo"``.
    kube-apiserver returns it in a 400 BadRequest Status whose message is
    ``<Kind> in version "<version>" cannot be handled as a <Kind>: <this text>``.
    """
    return "strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in paths)


def unknown_field_warnings(paths: Sequence[str]) -> list[str]:
    """The warnings ``fieldValidation=Warn`` sends (one ``Warning: 299`` header each)."""
    return [f'unknown field "{p}"' for p in paths]


# --- patch metadata -----------------------------------------------------------------------

def field_at(kind: str, path: Sequence[str]) -> FieldSpec | None:
    """The field at ``path`` (field names; list indices omitted) below a kind's top level.

    ``field_at("Deployment", ["spec", "template", "spec", "containers"])`` is the
    containers field of PodSpec. None when the path leaves the described structures.
    """
    struct = kind_structure(kind)
    spec: FieldSpec | None = None
    for name in path:
        if struct is None:
            return None
        spec = struct.fields.get(name)
        if spec is None:
            return None
        ftype = spec.type
        while ftype.kind in (TypeKind.ARRAY, TypeKind.MAP) and ftype.item is not None:
            ftype = ftype.item
        struct = STRUCTURES.get(ftype.ref) if ftype.kind is TypeKind.OBJECT else None
    return spec


def list_patch_meta(kind: str, path: Sequence[str]) -> tuple[str, str] | None:
    """(merge key, patch strategy) of the list at ``path``, or None when it is replaced whole."""
    spec = field_at(kind, path)
    if spec is None or not spec.patch_merge_key:
        return None
    return spec.patch_merge_key, spec.patch_strategy
