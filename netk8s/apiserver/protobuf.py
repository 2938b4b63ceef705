"""Decoder for Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``).

kubectl's typed commands (``kubectl create namespace|configmap|secret|serviceaccount|
deployment|service ...``, ``kubectl expose``, ``kubectl debug --copy-to``) send their
object in Kubernetes' protobuf envelope instead of JSON. ``decode(body)`` turns such a
body into the JSON-shaped dict the API server handles for a JSON request.

The envelope is the 4-byte magic ``k8s\\x00`` followed by a ``runtime.Unknown`` message
(``typeMeta = 1`` {``apiVersion = 1``, ``kind = 2``}, ``raw = 2``, ``contentEncoding = 3``,
``contentType = 4``); ``raw`` is the object encoded per k8s.io/api's ``generated.proto``.
This module reads the protobuf wire format itself (varint, 64-bit, length-delimited and
32-bit fields; unknown fields are skipped) and maps field numbers to JSON names with a
table of the messages those commands produce (``MESSAGES``), taken from Kubernetes 1.32's
``generated.proto`` files.

Go's protobuf encoding writes every non-pointer field, zero or not, while its JSON
encoding drops zero ``omitempty`` fields. To give the same dict as the JSON the client
would have sent, zero scalars are omitted unless the field is marked ``keep`` (a Go
pointer, where presence is meaningful, or a field JSON always carries). Nested messages
are always kept (``"strategy": {}``), an unset ``metav1.Time`` becomes ``None`` (JSON
``null``), ``IntOrString`` becomes an int or a string, ``Quantity`` its string, and
``bytes`` map values become base64 strings as the JSON API shows them.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum, IntEnum
from typing import Any

from netk8s.errors import UserError

log = logging.getLogger(__name__)

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Go's zero time.Time (0001-01-01T00:00:00Z) in Unix seconds: JSON shows it as null.
_GO_ZERO_TIME_SECONDS = -62135596800


class ProtobufError(UserError, ValueError):
    """A protobuf body could not be decoded (bad magic, truncated or malformed data)."""


class UnsupportedKind(ProtobufError):
    """The body is well-formed but carries a kind this decoder has no table for."""

    def __init__(self, api_version: str, kind: str) -> None:
        self.api_version = api_version
        self.kind = kind
        super().__init__(
            f"kind {kind} ({api_version}) is not supported in protobuf; send JSON instead "
            f"(kubectl ... --dry-run=client -o json | kubectl apply -f -)")


class WireType(IntEnum):
    """Protobuf wire types (groups, 3 and 4, are not used by Kubernetes)."""

    VARINT = 0
    I64 = 1
    LEN = 2
    I32 = 5


class Kind(Enum):
    """How a field's value is decoded and shown in JSON."""

    STRING = "string"
    BYTES = "bytes"            # base64 string, as JSON shows []byte
    BOOL = "bool"
    INT32 = "int32"
    INT64 = "int64"
    MESSAGE = "message"        # a message from MESSAGES, named by FieldSpec.message
    MAP = "map"                # map<string, value>; value kind in FieldSpec.value
    TIME = "time"              # metav1.Time {seconds = 1, nanos = 2} -> RFC 3339 or None
    INT_OR_STRING = "intstr"   # intstr.IntOrString {type = 1, intVal = 2, strVal = 3}
    QUANTITY = "quantity"      # resource.Quantity {string = 1}


_SCALARS = {Kind.STRING, Kind.BYTES, Kind.BOOL, Kind.INT32, Kind.INT64}
_NUMERIC = {Kind.BOOL, Kind.INT32, Kind.INT64}
@dataclass(frozen=True)
class FieldSpec:
    """One field of a message: its JSON name and how to decode it."""

    name: str
    kind: Kind
    message: str = ""            # message type, for MESSAGE (or MAP with MESSAGE values)
    repeated: bool = False
    value: Kind = Kind.STRING    # map value kind, for MAP
    keep: bool = False           # emit zero values (Go pointer, or a non-omitempty JSON field)
    inline: bool = False         # embedded Go struct with json:",inline": merge into the parent

    def __post_init__(self) -> None:
        takes_message = self.kind is Kind.MESSAGE or (self.kind is Kind.MAP and self.value is Kind.MESSAGE)
        if takes_message and not self.message:
            raise ValueError(f"field {self.name}: message type missing")


# -- table helpers (short names keep the table readable) --------------------------------------

def _s(name: str, keep: bool = False) -> FieldSpec:
    return FieldSpec(name, Kind.STRING, keep=keep)


def _ss(name: str) -> FieldSpec:
    return FieldSpec(name, Kind.STRING, repeated=True)


def _b(name: str, keep: bool = False) -> FieldSpec:
    return FieldSpec(name, Kind.BOOL, keep=keep)


def _i32(name: str, keep: bool = False) -> FieldSpec:
    return FieldSpec(name, Kind.INT32, keep=keep)


def _i64(name: str, keep: bool = False) -> FieldSpec:
    return FieldSpec(name, Kind.INT64, keep=keep)


def _m(name: str, message: str, inline: bool = False) -> FieldSpec:
    return FieldSpec(name, Kind.MESSAGE, message=message, inline=inline)


def _ms(name: str, message: str) -> FieldSpec:
    return FieldSpec(name, Kind.MESSAGE, message=message, repeated=True)


def _map(name: str, value: Kind = Kind.STRING) -> FieldSpec:
    return FieldSpec(name, Kind.MAP, value=value)


def _t(name: str) -> FieldSpec:
    return FieldSpec(name, Kind.TIME)


def _ios(name: str) -> FieldSpec:
    return FieldSpec(name, Kind.INT_OR_STRING)


def _q(name: str) -> FieldSpec:
    return FieldSpec(name, Kind.QUANTITY)


_OBJECT = {1: _m("metadata", "ObjectMeta")}
_LOCAL_REF = _m("localObjectReference", "LocalObjectReference", inline=True)
_AFFINITY_TERMS = {
    1: _ms("requiredDuringSchedulingIgnoredDuringExecution", "PodAffinityTerm"),
    2: _ms("preferredDuringSchedulingIgnoredDuringExecution", "WeightedPodAffinityTerm"),
}
_CONTAINER = {
    1: _s("name", keep=True), 2: _s("image"), 3: _ss("command"), 4: _ss("args"), 5: _s("workingDir"),
    6: _ms("ports", "ContainerPort"), 7: _ms("env", "EnvVar"), 8: _m("resources", "ResourceRequirements"),
    9: _ms("volumeMounts", "VolumeMount"), 10: _m("livenessProbe", "Probe"),
    11: _m("readinessProbe", "Probe"), 12: _m("lifecycle", "Lifecycle"), 13: _s("terminationMessagePath"),
    14: _s("imagePullPolicy"), 15: _m("securityContext", "SecurityContext"), 16: _b("stdin"),
    17: _b("stdinOnce"), 18: _b("tty"), 19: _ms("envFrom", "EnvFromSource"),
    20: _s("terminationMessagePolicy"), 21: _ms("volumeDevices", "VolumeDevice"),
    22: _m("startupProbe", "Probe"), 23: _ms("resizePolicy", "ContainerResizePolicy"),
    24: _s("restartPolicy", keep=True),
}
_PROBE_ACTIONS = {1: _m("exec", "ExecAction"), 2: _m("httpGet", "HTTPGetAction"),
                  3: _m("tcpSocket", "TCPSocketAction")}

# Field numbers from Kubernetes 1.32 generated.proto (k8s.io/api core/v1 and apps/v1,
# k8s.io/apimachinery meta/v1, runtime, util/intstr and api/resource).
MESSAGES: dict[str, dict[int, FieldSpec]] = {
    # -- runtime ---------------------------------------------------------------------------
    "TypeMeta": {1: _s("apiVersion"), 2: _s("kind")},
    # -- meta/v1 ---------------------------------------------------------------------------
    "ObjectMeta": {
        1: _s("name"), 2: _s("generateName"), 3: _s("namespace"), 4: _s("selfLink"), 5: _s("uid"),
        6: _s("resourceVersion"), 7: _i64("generation"), 8: _t("creationTimestamp"),
        9: _t("deletionTimestamp"), 10: _i64("deletionGracePeriodSeconds", keep=True),
        11: _map("labels"), 12: _map("annotations"), 13: _ms("ownerReferences", "OwnerReference"),
        14: _ss("finalizers"),
        # 17 managedFields: skipped (servers recompute it).
    },
    "OwnerReference": {
        5: _s("apiVersion", keep=True), 1: _s("kind", keep=True), 3: _s("name", keep=True),
        4: _s("uid", keep=True), 6: _b("controller", keep=True), 7: _b("blockOwnerDeletion", keep=True),
    },
    "LabelSelector": {1: _map("matchLabels"), 2: _ms("matchExpressions", "LabelSelectorRequirement")},
    "LabelSelectorRequirement": {1: _s("key", keep=True), 2: _s("operator", keep=True), 3: _ss("values")},
    "Condition": {
        1: _s("type", keep=True), 2: _s("status", keep=True), 3: _i64("observedGeneration"),
        4: _t("lastTransitionTime"), 5: _s("reason", keep=True), 6: _s("message", keep=True),
    },
    # -- core/v1: simple kinds --------------------------------------------------------------
    "Namespace": {**_OBJECT, 2: _m("spec", "NamespaceSpec"), 3: _m("status", "NamespaceStatus")},
    "NamespaceSpec": {1: _ss("finalizers")},
    "NamespaceStatus": {1: _s("phase"), 2: _ms("conditions", "NamespaceCondition")},
    "NamespaceCondition": {
        1: _s("type", keep=True), 2: _s("status", keep=True), 4: _t("lastTransitionTime"),
        5: _s("reason"), 6: _s("message"),
    },
    "ConfigMap": {
        **_OBJECT, 2: _map("data"), 3: _map("binaryData", Kind.BYTES), 4: _b("immutable", keep=True),
    },
    "Secret": {
        **_OBJECT, 2: _map("data", Kind.BYTES), 3: _s("type"), 4: _map("stringData"),
        5: _b("immutable", keep=True),
    },
    "ServiceAccount": {
        **_OBJECT, 2: _ms("secrets", "ObjectReference"),
        3: _ms("imagePullSecrets", "LocalObjectReference"),
        4: _b("automountServiceAccountToken", keep=True),
    },
    "ObjectReference": {
        1: _s("kind"), 2: _s("namespace"), 3: _s("name"), 4: _s("uid"), 5: _s("apiVersion"),
        6: _s("resourceVersion"), 7: _s("fieldPath"),
    },
    "LocalObjectReference": {1: _s("name")},
    # -- core/v1: Service -------------------------------------------------------------------
    "Service": {**_OBJECT, 2: _m("spec", "ServiceSpec"), 3: _m("status", "ServiceStatus")},
    "ServiceSpec": {
        1: _ms("ports", "ServicePort"), 2: _map("selector"), 3: _s("clusterIP"), 18: _ss("clusterIPs"),
        4: _s("type"), 5: _ss("externalIPs"), 7: _s("sessionAffinity"), 8: _s("loadBalancerIP"),
        9: _ss("loadBalancerSourceRanges"), 10: _s("externalName"), 11: _s("externalTrafficPolicy"),
        12: _i32("healthCheckNodePort"), 13: _b("publishNotReadyAddresses"),
        14: _m("sessionAffinityConfig", "SessionAffinityConfig"), 19: _ss("ipFamilies"),
        17: _s("ipFamilyPolicy", keep=True), 20: _b("allocateLoadBalancerNodePorts", keep=True),
        21: _s("loadBalancerClass", keep=True), 22: _s("internalTrafficPolicy", keep=True),
        23: _s("trafficDistribution", keep=True),
    },
    "ServicePort": {
        1: _s("name"), 2: _s("protocol"), 6: _s("appProtocol", keep=True), 3: _i32("port", keep=True),
        4: _ios("targetPort"), 5: _i32("nodePort"),
    },
    "SessionAffinityConfig": {1: _m("clientIP", "ClientIPConfig")},
    "ClientIPConfig": {1: _i32("timeoutSeconds", keep=True)},
    "ServiceStatus": {1: _m("loadBalancer", "LoadBalancerStatus"), 2: _ms("conditions", "Condition")},
    "LoadBalancerStatus": {1: _ms("ingress", "LoadBalancerIngress")},
    "LoadBalancerIngress": {
        1: _s("ip"), 2: _s("hostname"), 3: _s("ipMode", keep=True), 4: _ms("ports", "PortStatus"),
    },
    "PortStatus": {1: _i32("port", keep=True), 2: _s("protocol", keep=True), 3: _s("error", keep=True)},
    # -- core/v1: Pod -----------------------------------------------------------------------
    "Pod": {**_OBJECT, 2: _m("spec", "PodSpec"), 3: _m("status", "PodStatus")},
    "PodTemplateSpec": {**_OBJECT, 2: _m("spec", "PodSpec")},
    "PodSpec": {
        1: _ms("volumes", "Volume"), 20: _ms("initContainers", "Container"), 2: _ms("containers", "Container"),
        34: _ms("ephemeralContainers", "EphemeralContainer"), 3: _s("restartPolicy"),
        4: _i64("terminationGracePeriodSeconds", keep=True), 5: _i64("activeDeadlineSeconds", keep=True),
        6: _s("dnsPolicy"), 7: _map("nodeSelector"), 8: _s("serviceAccountName"), 9: _s("serviceAccount"),
        21: _b("automountServiceAccountToken", keep=True), 10: _s("nodeName"), 11: _b("hostNetwork"),
        12: _b("hostPID"), 13: _b("hostIPC"), 27: _b("shareProcessNamespace", keep=True),
        14: _m("securityContext", "PodSecurityContext"), 15: _ms("imagePullSecrets", "LocalObjectReference"),
        16: _s("hostname"), 17: _s("subdomain"), 18: _m("affinity", "Affinity"), 19: _s("schedulerName"),
        22: _ms("tolerations", "Toleration"), 23: _ms("hostAliases", "HostAlias"),
        24: _s("priorityClassName"), 25: _i32("priority", keep=True), 26: _m("dnsConfig", "PodDNSConfig"),
        28: _ms("readinessGates", "PodReadinessGate"), 29: _s("runtimeClassName", keep=True),
        30: _b("enableServiceLinks", keep=True), 31: _s("preemptionPolicy", keep=True),
        32: _map("overhead", Kind.QUANTITY),
        33: _ms("topologySpreadConstraints", "TopologySpreadConstraint"),
        35: _b("setHostnameAsFQDN", keep=True), 36: _m("os", "PodOS"), 37: _b("hostUsers", keep=True),
        38: _ms("schedulingGates", "PodSchedulingGate"), 39: _ms("resourceClaims", "PodResourceClaim"),
        40: _m("resources", "ResourceRequirements"), 41: _s("hostnameOverride", keep=True),
    },
    "PodStatus": {
        1: _s("phase"), 2: _ms("conditions", "PodCondition"), 3: _s("message"), 4: _s("reason"),
        11: _s("nominatedNodeName"), 5: _s("hostIP"), 16: _ms("hostIPs", "HostIP"), 6: _s("podIP"),
        12: _ms("podIPs", "PodIP"), 7: _t("startTime"), 9: _s("qosClass"),
        # 8/10/13 container statuses: not part of what clients create; skipped.
    },
    "PodCondition": {
        1: _s("type", keep=True), 7: _i64("observedGeneration"), 2: _s("status", keep=True),
        3: _t("lastProbeTime"), 4: _t("lastTransitionTime"), 5: _s("reason"), 6: _s("message"),
    },
    "PodIP": {1: _s("ip", keep=True)},
    "HostIP": {1: _s("ip", keep=True)},
    "PodOS": {1: _s("name", keep=True)},
    "PodReadinessGate": {1: _s("conditionType", keep=True)},
    "PodSchedulingGate": {1: _s("name", keep=True)},
    "PodResourceClaim": {
        1: _s("name", keep=True), 3: _s("resourceClaimName", keep=True),
        4: _s("resourceClaimTemplateName", keep=True),
    },
    "HostAlias": {1: _s("ip", keep=True), 2: _ss("hostnames")},
    "PodDNSConfig": {1: _ss("nameservers"), 2: _ss("searches"), 3: _ms("options", "PodDNSConfigOption")},
    "PodDNSConfigOption": {1: _s("name"), 2: _s("value", keep=True)},
    "PodSecurityContext": {
        1: _m("seLinuxOptions", "SELinuxOptions"), 8: _m("windowsOptions", "WindowsSecurityContextOptions"),
        2: _i64("runAsUser", keep=True), 6: _i64("runAsGroup", keep=True), 3: _b("runAsNonRoot", keep=True),
        4: FieldSpec("supplementalGroups", Kind.INT64, repeated=True),
        12: _s("supplementalGroupsPolicy", keep=True), 5: _i64("fsGroup", keep=True),
        7: _ms("sysctls", "Sysctl"), 9: _s("fsGroupChangePolicy", keep=True),
        10: _m("seccompProfile", "SeccompProfile"), 11: _m("appArmorProfile", "AppArmorProfile"),
        13: _s("seLinuxChangePolicy", keep=True),
    },
    "SecurityContext": {
        1: _m("capabilities", "Capabilities"), 2: _b("privileged", keep=True),
        3: _m("seLinuxOptions", "SELinuxOptions"), 10: _m("windowsOptions", "WindowsSecurityContextOptions"),
        4: _i64("runAsUser", keep=True), 8: _i64("runAsGroup", keep=True), 5: _b("runAsNonRoot", keep=True),
        6: _b("readOnlyRootFilesystem", keep=True), 7: _b("allowPrivilegeEscalation", keep=True),
        9: _s("procMount", keep=True), 11: _m("seccompProfile", "SeccompProfile"),
        12: _m("appArmorProfile", "AppArmorProfile"),
    },
    "Capabilities": {1: _ss("add"), 2: _ss("drop")},
    "SELinuxOptions": {1: _s("user"), 2: _s("role"), 3: _s("type"), 4: _s("level")},
    "WindowsSecurityContextOptions": {
        1: _s("gmsaCredentialSpecName", keep=True), 2: _s("gmsaCredentialSpec", keep=True),
        3: _s("runAsUserName", keep=True), 4: _b("hostProcess", keep=True),
    },
    "SeccompProfile": {1: _s("type", keep=True), 2: _s("localhostProfile", keep=True)},
    "AppArmorProfile": {1: _s("type", keep=True), 2: _s("localhostProfile", keep=True)},
    "Sysctl": {1: _s("name", keep=True), 2: _s("value", keep=True)},
    "Toleration": {
        1: _s("key"), 2: _s("operator"), 3: _s("value"), 4: _s("effect"),
        5: _i64("tolerationSeconds", keep=True),
    },
    "Affinity": {
        1: _m("nodeAffinity", "NodeAffinity"), 2: _m("podAffinity", "PodAffinity"),
        3: _m("podAntiAffinity", "PodAntiAffinity"),
    },
    "NodeAffinity": {
        1: _m("requiredDuringSchedulingIgnoredDuringExecution", "NodeSelector"),
        2: _ms("preferredDuringSchedulingIgnoredDuringExecution", "PreferredSchedulingTerm"),
    },
    "NodeSelector": {1: _ms("nodeSelectorTerms", "NodeSelectorTerm")},
    "NodeSelectorTerm": {
        1: _ms("matchExpressions", "NodeSelectorRequirement"), 2: _ms("matchFields", "NodeSelectorRequirement"),
    },
    "NodeSelectorRequirement": {1: _s("key", keep=True), 2: _s("operator", keep=True), 3: _ss("values")},
    "PreferredSchedulingTerm": {1: _i32("weight", keep=True), 2: _m("preference", "NodeSelectorTerm")},
    "PodAffinity": dict(_AFFINITY_TERMS),
    "PodAntiAffinity": dict(_AFFINITY_TERMS),
    "PodAffinityTerm": {
        1: _m("labelSelector", "LabelSelector"), 2: _ss("namespaces"), 3: _s("topologyKey", keep=True),
        4: _m("namespaceSelector", "LabelSelector"), 5: _ss("matchLabelKeys"), 6: _ss("mismatchLabelKeys"),
    },
    "WeightedPodAffinityTerm": {1: _i32("weight", keep=True), 2: _m("podAffinityTerm", "PodAffinityTerm")},
    "TopologySpreadConstraint": {
        1: _i32("maxSkew", keep=True), 2: _s("topologyKey", keep=True), 3: _s("whenUnsatisfiable", keep=True),
        4: _m("labelSelector", "LabelSelector"), 5: _i32("minDomains", keep=True),
        6: _s("nodeAffinityPolicy", keep=True), 7: _s("nodeTaintsPolicy", keep=True), 8: _ss("matchLabelKeys"),
    },
    # -- core/v1: containers ----------------------------------------------------------------
    "Container": dict(_CONTAINER),
    "EphemeralContainer": {
        1: _m("ephemeralContainerCommon", "EphemeralContainerCommon", inline=True),
        2: _s("targetContainerName"),
    },
    "EphemeralContainerCommon": dict(_CONTAINER),
    "ContainerPort": {
        1: _s("name"), 2: _i32("hostPort"), 3: _i32("containerPort", keep=True), 4: _s("protocol"),
        5: _s("hostIP"),
    },
    "ContainerResizePolicy": {1: _s("resourceName", keep=True), 2: _s("restartPolicy", keep=True)},
    "EnvVar": {1: _s("name", keep=True), 2: _s("value"), 3: _m("valueFrom", "EnvVarSource")},
    "EnvVarSource": {
        1: _m("fieldRef", "ObjectFieldSelector"), 2: _m("resourceFieldRef", "ResourceFieldSelector"),
        3: _m("configMapKeyRef", "ConfigMapKeySelector"), 4: _m("secretKeyRef", "SecretKeySelector"),
    },
    "ObjectFieldSelector": {1: _s("apiVersion"), 2: _s("fieldPath", keep=True)},
    "ResourceFieldSelector": {1: _s("containerName"), 2: _s("resource", keep=True), 3: _q("divisor")},
    "ConfigMapKeySelector": {1: _LOCAL_REF, 2: _s("key", keep=True), 3: _b("optional", keep=True)},
    "SecretKeySelector": {1: _LOCAL_REF, 2: _s("key", keep=True), 3: _b("optional", keep=True)},
    "EnvFromSource": {
        1: _s("prefix"), 2: _m("configMapRef", "ConfigMapEnvSource"), 3: _m("secretRef", "SecretEnvSource"),
    },
    "ConfigMapEnvSource": {1: _LOCAL_REF, 2: _b("optional", keep=True)},
    "SecretEnvSource": {1: _LOCAL_REF, 2: _b("optional", keep=True)},
    "ResourceRequirements": {
        1: _map("limits", Kind.QUANTITY), 2: _map("requests", Kind.QUANTITY), 3: _ms("claims", "ResourceClaim"),
    },
    "ResourceClaim": {1: _s("name", keep=True), 2: _s("request")},
    "VolumeMount": {
        1: _s("name", keep=True), 2: _b("readOnly"), 7: _s("recursiveReadOnly", keep=True),
        3: _s("mountPath", keep=True), 4: _s("subPath"), 5: _s("mountPropagation", keep=True),
        6: _s("subPathExpr"),
    },
    "VolumeDevice": {1: _s("name", keep=True), 2: _s("devicePath", keep=True)},
    "Probe": {
        1: _m("handler", "ProbeHandler", inline=True), 2: _i32("initialDelaySeconds"),
        3: _i32("timeoutSeconds"), 4: _i32("periodSeconds"), 5: _i32("successThreshold"),
        6: _i32("failureThreshold"), 7: _i64("terminationGracePeriodSeconds", keep=True),
    },
    "ProbeHandler": {**_PROBE_ACTIONS, 4: _m("grpc", "GRPCAction")},
    "Lifecycle": {
        1: _m("postStart", "LifecycleHandler"), 2: _m("preStop", "LifecycleHandler"),
        3: _s("stopSignal", keep=True),
    },
    "LifecycleHandler": {**_PROBE_ACTIONS, 4: _m("sleep", "SleepAction")},
    "ExecAction": {1: _ss("command")},
    "HTTPGetAction": {
        1: _s("path"), 2: _ios("port"), 3: _s("host"), 4: _s("scheme"), 5: _ms("httpHeaders", "HTTPHeader"),
    },
    "HTTPHeader": {1: _s("name", keep=True), 2: _s("value", keep=True)},
    "TCPSocketAction": {1: _ios("port"), 2: _s("host")},
    "GRPCAction": {1: _i32("port", keep=True), 2: _s("service", keep=True)},
    "SleepAction": {1: _i64("seconds", keep=True)},
    # -- core/v1: volumes -------------------------------------------------------------------
    "Volume": {1: _s("name", keep=True), 2: _m("volumeSource", "VolumeSource", inline=True)},
    "VolumeSource": {
        1: _m("hostPath", "HostPathVolumeSource"), 2: _m("emptyDir", "EmptyDirVolumeSource"),
        6: _m("secret", "SecretVolumeSource"), 7: _m("nfs", "NFSVolumeSource"),
        10: _m("persistentVolumeClaim", "PersistentVolumeClaimVolumeSource"),
        16: _m("downwardAPI", "DownwardAPIVolumeSource"), 19: _m("configMap", "ConfigMapVolumeSource"),
        26: _m("projected", "ProjectedVolumeSource"), 28: _m("csi", "CSIVolumeSource"),
        30: _m("image", "ImageVolumeSource"),
    },
    "HostPathVolumeSource": {1: _s("path", keep=True), 2: _s("type", keep=True)},
    "EmptyDirVolumeSource": {1: _s("medium"), 2: _q("sizeLimit")},
    "SecretVolumeSource": {
        1: _s("secretName"), 2: _ms("items", "KeyToPath"), 3: _i32("defaultMode", keep=True),
        4: _b("optional", keep=True),
    },
    "NFSVolumeSource": {1: _s("server", keep=True), 2: _s("path", keep=True), 3: _b("readOnly")},
    "PersistentVolumeClaimVolumeSource": {1: _s("claimName", keep=True), 2: _b("readOnly")},
    "DownwardAPIVolumeSource": {
        1: _ms("items", "DownwardAPIVolumeFile"), 2: _i32("defaultMode", keep=True),
    },
    "DownwardAPIVolumeFile": {
        1: _s("path", keep=True), 2: _m("fieldRef", "ObjectFieldSelector"),
        3: _m("resourceFieldRef", "ResourceFieldSelector"), 4: _i32("mode", keep=True),
    },
    "ConfigMapVolumeSource": {
        1: _LOCAL_REF, 2: _ms("items", "KeyToPath"), 3: _i32("defaultMode", keep=True),
        4: _b("optional", keep=True),
    },
    "KeyToPath": {1: _s("key", keep=True), 2: _s("path", keep=True), 3: _i32("mode", keep=True)},
    "ProjectedVolumeSource": {1: _ms("sources", "VolumeProjection"), 2: _i32("defaultMode", keep=True)},
    "VolumeProjection": {
        1: _m("secret", "SecretProjection"), 2: _m("downwardAPI", "DownwardAPIProjection"),
        3: _m("configMap", "ConfigMapProjection"),
        4: _m("serviceAccountToken", "ServiceAccountTokenProjection"),
    },
    "SecretProjection": {1: _LOCAL_REF, 2: _ms("items", "KeyToPath"), 4: _b("optional", keep=True)},
    "ConfigMapProjection": {1: _LOCAL_REF, 2: _ms("items", "KeyToPath"), 4: _b("optional", keep=True)},
    "DownwardAPIProjection": {1: _ms("items", "DownwardAPIVolumeFile")},
    "ServiceAccountTokenProjection": {
        1: _s("audience"), 2: _i64("expirationSeconds", keep=True), 3: _s("path", keep=True),
    },
    "CSIVolumeSource": {
        1: _s("driver", keep=True), 2: _b("readOnly", keep=True), 3: _s("fsType", keep=True),
        4: _map("volumeAttributes"), 5: _m("nodePublishSecretRef", "LocalObjectReference"),
    },
    "ImageVolumeSource": {1: _s("reference"), 2: _s("pullPolicy")},
    # -- apps/v1 ----------------------------------------------------------------------------
    "Deployment": {**_OBJECT, 2: _m("spec", "DeploymentSpec"), 3: _m("status", "DeploymentStatus")},
    "DeploymentSpec": {
        1: _i32("replicas", keep=True), 2: _m("selector", "LabelSelector"), 3: _m("template", "PodTemplateSpec"),
        4: _m("strategy", "DeploymentStrategy"), 5: _i32("minReadySeconds"),
        6: _i32("revisionHistoryLimit", keep=True), 7: _b("paused"),
        9: _i32("progressDeadlineSeconds", keep=True),
    },
    "DeploymentStrategy": {1: _s("type"), 2: _m("rollingUpdate", "RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: _ios("maxUnavailable"), 2: _ios("maxSurge")},
    "DeploymentStatus": {
        1: _i64("observedGeneration"), 2: _i32("replicas"), 3: _i32("updatedReplicas"),
        7: _i32("readyReplicas"), 4: _i32("availableReplicas"), 5: _i32("unavailableReplicas"),
        6: _ms("conditions", "DeploymentCondition"), 8: _i32("collisionCount", keep=True),
    },
    "DeploymentCondition": {
        1: _s("type", keep=True), 2: _s("status", keep=True), 6: _t("lastUpdateTime"),
        7: _t("lastTransitionTime"), 4: _s("reason"), 5: _s("message"),
    },
    "ReplicaSet": {**_OBJECT, 2: _m("spec", "ReplicaSetSpec"), 3: _m("status", "ReplicaSetStatus")},
    "ReplicaSetSpec": {
        1: _i32("replicas", keep=True), 4: _i32("minReadySeconds"), 2: _m("selector", "LabelSelector"),
        3: _m("template", "PodTemplateSpec"),
    },
    "ReplicaSetStatus": {
        1: _i32("replicas", keep=True), 2: _i32("fullyLabeledReplicas"), 4: _i32("readyReplicas"),
        5: _i32("availableReplicas"), 3: _i64("observedGeneration"),
        6: _ms("conditions", "ReplicaSetCondition"),
    },
    "ReplicaSetCondition": {
        1: _s("type", keep=True), 2: _s("status", keep=True), 3: _t("lastTransitionTime"),
        4: _s("reason"), 5: _s("message"),
    },
}

# (apiVersion, kind) of the objects decode() accepts -> their message in MESSAGES.
KINDS: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "Namespace",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Secret"): "Secret",
    ("v1", "ServiceAccount"): "ServiceAccount",
    ("v1", "Service"): "Service",
    ("v1", "Pod"): "Pod",
    ("apps/v1", "Deployment"): "Deployment",
    ("apps/v1", "ReplicaSet"): "ReplicaSet",
}


# -- wire format ----------------------------------------------------------------------------

def read_varint(data: bytes, pos: int, path: str = "") -> tuple[int, int]:
    """Read an unsigned varint at ``pos``; return (value, position after it)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError(f"{path or 'body'}: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError(f"{path or 'body'}: varint longer than 10 bytes")


def iter_fields(data: bytes, path: str = "") -> Iterator[tuple[int, WireType, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one encoded message.

    Varint and fixed-width values come as unsigned ints, length-delimited ones as bytes.
    """
    where = path or "body"
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = read_varint(data, pos, path)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError(f"{where}: field number 0 is invalid")
        if wire == WireType.VARINT:
            value, pos = read_varint(data, pos, path)
            yield number, WireType.VARINT, value
        elif wire == WireType.LEN:
            length, pos = read_varint(data, pos, path)
            if pos + length > end:
                raise ProtobufError(f"{where}: field {number} is truncated "
                                    f"({length} bytes announced, {end - pos} left)")
            yield number, WireType.LEN, bytes(data[pos:pos + length])
            pos += length
        elif wire in (WireType.I64, WireType.I32):
            size = 8 if wire == WireType.I64 else 4
            if pos + size > end:
                raise ProtobufError(f"{where}: field {number} is truncated")
            yield number, WireType(wire), int.from_bytes(data[pos:pos + size], "little")
            pos += size
        else:
            raise ProtobufError(f"{where}: field {number} has unsupported wire type {wire}")


def _signed(value: int, bits: int) -> int:
    """Two's-complement reinterpretation of an unsigned varint as Go's intN does."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _scalar(kind: Kind, wire: WireType, value: int | bytes, where: str) -> Any:
    if kind in (Kind.STRING, Kind.BYTES):
        if not isinstance(value, bytes):
            raise ProtobufError(f"{where}: expected length-delimited data, got wire type {int(wire)}")
        # Go's JSON encoder replaces invalid UTF-8 the same way.
        return value.decode("utf-8", "replace") if kind is Kind.STRING else base64.b64encode(value).decode()
    if not isinstance(value, int) or wire != WireType.VARINT:
        raise ProtobufError(f"{where}: expected a varint, got wire type {int(wire)}")
    if kind is Kind.BOOL:
        return value != 0
    return _signed(value, 32 if kind is Kind.INT32 else 64)


def _packed(kind: Kind, data: bytes, where: str) -> list[Any]:
    values = []
    pos = 0
    while pos < len(data):
        raw, pos = read_varint(data, pos, where)
        values.append(_scalar(kind, WireType.VARINT, raw, where))
    return values


def _time(data: bytes, where: str) -> str | None:
    seconds = nanos = 0
    for number, wire, value in iter_fields(data, where):
        if number == 1:
            seconds = _scalar(Kind.INT64, wire, value, where + ".seconds")
        elif number == 2:
            nanos = _scalar(Kind.INT32, wire, value, where + ".nanos")
    if not data or seconds == _GO_ZERO_TIME_SECONDS and nanos == 0:
        return None
    try:
        moment = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        raise ProtobufError(f"{where}: time {seconds}s is out of range") from None
    # metav1.Time marshals to JSON as RFC 3339 with whole seconds, in UTC.
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z")


def _int_or_string(data: bytes, where: str) -> int | str:
    kind, int_val, str_val = 0, 0, ""
    for number, wire, value in iter_fields(data, where):
        if number == 1:
            kind = _scalar(Kind.INT64, wire, value, where + ".type")
        elif number == 2:
            int_val = _scalar(Kind.INT32, wire, value, where + ".intVal")
        elif number == 3:
            str_val = _scalar(Kind.STRING, wire, value, where + ".strVal")
    return str_val if kind == 1 else int_val


def _quantity(data: bytes, where: str) -> str:
    text = "0"
    for number, wire, value in iter_fields(data, where):
        if number == 1:
            text = _scalar(Kind.STRING, wire, value, where)
    return text


def _special(kind: Kind, data: bytes, where: str) -> Any:
    if kind is Kind.TIME:
        return _time(data, where)
    if kind is Kind.INT_OR_STRING:
        return _int_or_string(data, where)
    return _quantity(data, where)


def _map_entry(spec: FieldSpec, data: bytes, where: str) -> tuple[str, Any]:
    key = ""
    value: Any = None
    for number, wire, raw in iter_fields(data, where):
        if number == 1:
            key = _scalar(Kind.STRING, wire, raw, where + " key")
        elif number == 2:
            value = _value(spec.value, spec.message, wire, raw, f"{where}[value]")
    if value is None and spec.value is not Kind.MESSAGE:
        value = {Kind.STRING: "", Kind.BYTES: "", Kind.QUANTITY: "0"}.get(spec.value, 0)
    return key, value


def _value(kind: Kind, message: str, wire: WireType, raw: int | bytes, where: str) -> Any:
    if kind in _SCALARS:
        return _scalar(kind, wire, raw, where)
    if not isinstance(raw, bytes):
        raise ProtobufError(f"{where}: expected length-delimited data, got wire type {int(wire)}")
    if kind is Kind.MESSAGE:
        return _decode(raw, message, where)
    return _special(kind, raw, where)


def _decode(data: bytes, message: str, path: str) -> dict[str, Any]:
    # MESSAGES has no cycles (a unit test checks), so recursion depth is bounded by the table.
    table = MESSAGES[message]
    out: dict[str, Any] = {}
    for number, wire, raw in iter_fields(data, path):
        spec = table.get(number)
        if spec is None:
            log.debug("%s: skipping unknown field %d of %s", path, number, message)
            continue
        where = f"{path}.{spec.name}"
        if spec.kind is Kind.MAP:
            if not isinstance(raw, bytes):
                raise ProtobufError(f"{where}: expected a map entry, got wire type {int(wire)}")
            key, value = _map_entry(spec, raw, where)
            out.setdefault(spec.name, {})[key] = value
        elif spec.repeated:
            items = out.setdefault(spec.name, [])
            if wire == WireType.LEN and spec.kind in _NUMERIC and isinstance(raw, bytes):
                items.extend(_packed(spec.kind, raw, where))
            else:
                items.append(_value(spec.kind, spec.message, wire, raw, f"{where}[{len(items)}]"))
        elif spec.inline:
            # Embedded struct: its fields sit in the parent's JSON object.
            out.update(_value(spec.kind, spec.message, wire, raw, path))
        else:
            value = _value(spec.kind, spec.message, wire, raw, where)
            previous = out.get(spec.name)
            if isinstance(previous, dict) and isinstance(value, dict):
                value = {**previous, **value}  # protobuf merges a repeated singular message
            # Only scalars follow omitempty: Go's JSON always writes structs (IntOrString,
            # Quantity, Time and nested messages), even zero ones.
            if spec.kind in _SCALARS and not spec.keep and value in ("", 0, False):
                out.pop(spec.name, None)
            else:
                out[spec.name] = value
    return out


def decode_message(data: bytes, message: str) -> dict[str, Any]:
    """Decode one encoded message of type ``message`` (a key of ``MESSAGES``) to a JSON dict."""
    if message not in MESSAGES:
        raise ProtobufError(f"unknown message type {message}")
    return _decode(data, message, message)


@dataclass(frozen=True)
class Envelope:
    """The ``runtime.Unknown`` wrapper of a protobuf body."""

    api_version: str
    kind: str
    raw: bytes
    content_encoding: str = ""
    content_type: str = ""


def unwrap(body: bytes) -> Envelope:
    """Check the magic and read the ``runtime.Unknown`` envelope of a protobuf body."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body: it does not start with the magic 'k8s\\x00'")
    type_meta: dict[str, Any] = {}
    raw = b""
    encoding = content_type = ""
    for number, wire, value in iter_fields(body[len(MAGIC):], "Unknown"):
        if number == 1:
            type_meta = _value(Kind.MESSAGE, "TypeMeta", wire, value, "Unknown.typeMeta")
        elif number == 2:
            if not isinstance(value, bytes):
                raise ProtobufError("Unknown.raw: expected length-delimited data")
            raw = value
        elif number == 3:
            encoding = _scalar(Kind.STRING, wire, value, "Unknown.contentEncoding")
        elif number == 4:
            content_type = _scalar(Kind.STRING, wire, value, "Unknown.contentType")
    return Envelope(type_meta.get("apiVersion", ""), type_meta.get("kind", ""), raw, encoding, content_type)


def decode(body: bytes) -> dict[str, Any]:
    """Decode a Kubernetes protobuf request body to the object's JSON-shaped dict.

    Raises ``UnsupportedKind`` for a kind without a table and ``ProtobufError`` for
    anything malformed; both carry a one-line message fit for a ``Status``.
    """
    envelope = unwrap(body)
    if not envelope.kind:
        raise ProtobufError("protobuf body has no kind in its typeMeta")
    message = KINDS.get((envelope.api_version, envelope.kind))
    if message is None:
        raise UnsupportedKind(envelope.api_version, envelope.kind)
    if envelope.content_encoding:
        raise ProtobufError(f"protobuf body has unsupported contentEncoding {envelope.content_encoding!r}")
    if envelope.content_type not in ("", CONTENT_TYPE):
        raise ProtobufError(f"protobuf body wraps unsupported contentType {envelope.content_type!r}")
    obj: dict[str, Any] = {"kind": envelope.kind, "apiVersion": envelope.api_version}
    obj.update(_decode(envelope.raw, message, envelope.kind))
    return obj
