"""Tests for netk8s.apiserver.protobuf: the Kubernetes protobuf body decoder.

The fixtures in data/protobuf/ are request bodies captured from kubectl v1.32 (pointed
at a scratch netk8s API server that saved every ``application/vnd.kubernetes.protobuf``
body). Each is checked against what the same command sends as JSON, i.e. the output of
``kubectl <same command> --dry-run=client -o json``, pasted below. ``pod_debug_copy.bin``
is ``kubectl debug rich --copy-to=rich-copy --keep-labels --keep-annotations
--keep-liveness --keep-readiness --keep-startup --share-processes=false --profile=general
--image=busybox --container=dbg -- sleep 1000`` on a pod created from JSON; its spec must
equal the spec the server returned for that pod (``kubectl get pod rich -o json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netk8s.apiserver import protobuf as pb
from netk8s.apiserver.protobuf import (
    KINDS,
    MESSAGES,
    Kind,
    ProtobufError,
    UnsupportedKind,
    WireType,
    decode,
    decode_message,
    iter_fields,
    read_varint,
    unwrap,
)
from netk8s.errors import UserError

FIXTURES = Path(__file__).parent / "data" / "protobuf"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


# -- a tiny encoder, for hand-built wire data ------------------------------------------------

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative ints go on the wire as 10-byte two's complement
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def vint(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


def ld(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return key(number, 2) + varint(len(data)) + data


def envelope(api_version: str, kind: str, raw: bytes, encoding: str = "", content_type: str = "") -> bytes:
    type_meta = ld(1, api_version) + ld(2, kind)
    return b"k8s\x00" + ld(1, type_meta) + ld(2, raw) + ld(3, encoding) + ld(4, content_type)


# -- kubectl fixtures vs kubectl's own JSON -----------------------------------------------------

NULL_META = {"creationTimestamp": None}

KUBECTL_JSON: dict[str, dict[str, Any]] = {
    # kubectl create namespace foo
    "namespace": {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "foo", **NULL_META},
                  "spec": {}, "status": {}},
    # kubectl create configmap cm --from-literal=a=b --from-literal=greeting='hello world'
    #   --from-file=bin=blob.bin   (blob.bin: b"\x00\x01\xff\xfe binary")
    "configmap": {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm", **NULL_META},
                  "data": {"a": "b", "greeting": "hello world"}, "binaryData": {"bin": "AAH//iBiaW5hcnk="}},
    # kubectl create secret generic s --from-literal=user=admin --from-literal=pass=s3cr3t
    "secret_generic": {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s", **NULL_META},
                       "data": {"pass": "czNjcjN0", "user": "YWRtaW4="}},
    # kubectl create secret docker-registry reg --docker-server=r.example --docker-username=u --docker-password=p
    "secret_docker": {
        "kind": "Secret", "apiVersion": "v1", "metadata": {"name": "reg", **NULL_META},
        "data": {".dockerconfigjson": "eyJhdXRocyI6eyJyLmV4YW1wbGUiOnsidXNlcm5hbWUiOiJ1IiwicGFzc3dvcmQiOiJwIiwiYXV0aCI6"
                                      "ImRUcHcifX19"},
        "type": "kubernetes.io/dockerconfigjson"},
    # kubectl create serviceaccount sa
    "serviceaccount": {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "sa", **NULL_META}},
    # kubectl create deployment web --image=netk8s/echo --replicas=2 --port=8080
    "deployment": {
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "web", **NULL_META, "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {**NULL_META, "labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "echo", "image": "netk8s/echo",
                                                       "ports": [{"containerPort": 8080}], "resources": {}}]}},
                 "strategy": {}},
        "status": {}},
    # kubectl create deployment multi --image=busybox --image=netk8s/echo --replicas=0
    "deployment_multi": {
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "multi", **NULL_META, "labels": {"app": "multi"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "multi"}},
                 "template": {"metadata": {**NULL_META, "labels": {"app": "multi"}},
                              "spec": {"containers": [{"name": "busybox", "image": "busybox", "resources": {}},
                                                      {"name": "echo", "image": "netk8s/echo", "resources": {}}]}},
                 "strategy": {}},
        "status": {}},
    # kubectl create deployment cmd --image=busybox -- sleep 1000
    "deployment_command": {
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "cmd", **NULL_META, "labels": {"app": "cmd"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "cmd"}},
                 "template": {"metadata": {**NULL_META, "labels": {"app": "cmd"}},
                              "spec": {"containers": [{"name": "busybox", "image": "busybox",
                                                       "command": ["sleep", "1000"], "resources": {}}]}},
                 "strategy": {}},
        "status": {}},
    # kubectl create service clusterip svc --tcp=80:8080 --tcp=443
    "service_clusterip": {
        "kind": "Service", "apiVersion": "v1", "metadata": {"name": "svc", **NULL_META, "labels": {"app": "svc"}},
        "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
                           {"name": "443", "protocol": "TCP", "port": 443, "targetPort": 443}],
                 "selector": {"app": "svc"}, "type": "ClusterIP"},
        "status": {"loadBalancer": {}}},
    # kubectl create service clusterip headless --clusterip=None
    "service_headless": {
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "headless", **NULL_META, "labels": {"app": "headless"}},
        "spec": {"selector": {"app": "headless"}, "clusterIP": "None", "type": "ClusterIP"},
        "status": {"loadBalancer": {}}},
    # kubectl create service nodeport np --tcp=80:8080 --node-port=30080
    "service_nodeport": {
        "kind": "Service", "apiVersion": "v1", "metadata": {"name": "np", **NULL_META, "labels": {"app": "np"}},
        "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080,
                            "nodePort": 30080}],
                 "selector": {"app": "np"}, "type": "NodePort"},
        "status": {"loadBalancer": {}}},
    # kubectl create service loadbalancer lb --tcp=80:8080
    "service_loadbalancer": {
        "kind": "Service", "apiVersion": "v1", "metadata": {"name": "lb", **NULL_META, "labels": {"app": "lb"}},
        "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                 "selector": {"app": "lb"}, "type": "LoadBalancer"},
        "status": {"loadBalancer": {}}},
    # kubectl create service externalname ext --external-name=example.com
    "service_externalname": {
        "kind": "Service", "apiVersion": "v1", "metadata": {"name": "ext", **NULL_META, "labels": {"app": "ext"}},
        "spec": {"selector": {"app": "ext"}, "type": "ExternalName", "externalName": "example.com"},
        "status": {"loadBalancer": {}}},
}


@pytest.mark.parametrize("name", sorted(KUBECTL_JSON))
def test_kubectl_body_decodes_to_what_kubectl_sends_as_json(name: str) -> None:
    assert decode(fixture(name)) == KUBECTL_JSON[name]


def test_every_fixture_is_exercised() -> None:
    on_disk = {p.stem for p in FIXTURES.glob("*.bin")}
    assert on_disk == set(KUBECTL_JSON) | {"job", "pod_debug_copy"}


# The pod `rich` as the server returned it (kubectl get pod rich -o json), spec only.
RICH_SPEC: dict[str, Any] = {
    "activeDeadlineSeconds": 86400,
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}, "weight": 10}],
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"podAffinityTerm": {
                "labelSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}],
                                  "matchLabels": {"app": "rich"}},
                "topologyKey": "kubernetes.io/hostname"},
             "weight": 100}]}},
    "automountServiceAccountToken": False,
    "containers": [
        {"args": ["--port", "8080", ""],
         "command": ["/bin/echo-server"],
         "env": [{"name": "PLAIN", "value": "x"},
                 {"name": "EMPTY"},
                 {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
                 {"name": "MEM", "valueFrom": {"resourceFieldRef": {"divisor": "1Mi", "resource": "limits.memory"}}},
                 {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"key": "a", "name": "cm", "optional": False}}},
                 {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"key": "user", "name": "s"}}}],
         "envFrom": [{"configMapRef": {"name": "cm", "optional": True}, "prefix": "CM_"},
                     {"secretRef": {"name": "s"}}],
         "image": "netk8s/echo:1.0",
         "imagePullPolicy": "IfNotPresent",
         "lifecycle": {"postStart": {"httpGet": {"host": "127.0.0.1", "path": "/start", "port": 8080}},
                       "preStop": {"sleep": {"seconds": 5}}},
         "livenessProbe": {"failureThreshold": 4,
                           "httpGet": {"httpHeaders": [{"name": "X-Probe", "value": "1"},
                                                       {"name": "X-Empty", "value": ""}],
                                       "path": "/healthz", "port": "http", "scheme": "HTTP"},
                           "initialDelaySeconds": 3, "periodSeconds": 5, "successThreshold": 1,
                           "terminationGracePeriodSeconds": 0, "timeoutSeconds": 2},
         "name": "app",
         "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"},
                   {"containerPort": 53, "hostIP": "127.0.0.1", "hostPort": 5353, "name": "dns", "protocol": "UDP"}],
         "readinessProbe": {"periodSeconds": 2, "tcpSocket": {"port": 8080}},
         "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
         "resources": {"limits": {"cpu": "500m", "memory": "128Mi"},
                       "requests": {"cpu": "250m", "ephemeral-storage": "1Gi", "memory": "64Mi"}},
         "securityContext": {"allowPrivilegeEscalation": False,
                             "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                             "privileged": False, "readOnlyRootFilesystem": True, "runAsGroup": 0,
                             "runAsNonRoot": True, "runAsUser": 1000, "seLinuxOptions": {"level": "s0:c123,c456"},
                             "seccompProfile": {"type": "RuntimeDefault"}},
         "startupProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "failureThreshold": 30},
         "stdin": True,
         "terminationMessagePath": "/dev/termination-log",
         "terminationMessagePolicy": "FallbackToLogsOnError",
         "tty": True,
         "volumeMounts": [{"mountPath": "/tmp", "name": "scratch"},
                          {"mountPath": "/etc/cfg", "name": "cfg", "readOnly": True, "subPath": "a.txt"},
                          {"mountPath": "/host/log", "mountPropagation": "HostToContainer", "name": "host"},
                          {"mountPath": "/etc/info", "name": "info", "subPathExpr": "$(POD_IP)"}],
         "workingDir": "/srv"},
        {"args": ["sleep", "1000"],
         "image": "busybox",
         "imagePullPolicy": "Always",
         "name": "side",
         "readinessProbe": {"grpc": {"port": 9090, "service": "health"}},
         "resources": {},
         "terminationMessagePath": "/dev/termination-log",
         "terminationMessagePolicy": "File"}],
    "dnsConfig": {"nameservers": ["192.0.2.53"],
                  "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
                  "searches": ["svc.cluster.local"]},
    "dnsPolicy": "None",
    "enableServiceLinks": False,
    "hostAliases": [{"hostnames": ["one.example", "uno.example"], "ip": "192.0.2.1"}],
    "hostname": "rich-host",
    "imagePullSecrets": [{"name": "reg"}],
    "initContainers": [{"command": ["sh", "-c", "echo init"], "image": "busybox", "imagePullPolicy": "Always",
                        "name": "init", "resources": {"requests": {"cpu": "10m"}}, "restartPolicy": "Always",
                        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
    "nodeSelector": {"disk": "ssd", "kubernetes.io/os": "linux"},
    "os": {"name": "linux"},
    "preemptionPolicy": "Never",
    "priority": -5,
    "readinessGates": [{"conditionType": "example.com/ready"}],
    "restartPolicy": "Always",
    "schedulerName": "default-scheduler",
    "securityContext": {"fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch", "runAsGroup": 3000,
                        "runAsUser": 1000, "supplementalGroups": [4000, 5000],
                        "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]},
    "serviceAccountName": "sa",
    "shareProcessNamespace": False,
    "subdomain": "sub",
    "terminationGracePeriodSeconds": 0,
    "tolerations": [
        {"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane", "operator": "Exists"},
        {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists",
         "tolerationSeconds": 300},
        {"effect": "NoSchedule", "key": "dedicated", "operator": "Equal", "value": "rich"},
        {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists",
         "tolerationSeconds": 300}],
    "topologySpreadConstraints": [{"labelSelector": {"matchLabels": {"app": "rich"}}, "maxSkew": 1,
                                   "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
    "volumes": [
        {"emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}, "name": "scratch"},
        {"configMap": {"defaultMode": 420, "items": [{"key": "a", "mode": 256, "path": "a.txt"}], "name": "cm",
                       "optional": False},
         "name": "cfg"},
        {"name": "sec", "secret": {"defaultMode": 256, "optional": True, "secretName": "s"}},
        {"hostPath": {"path": "/var/log", "type": "Directory"}, "name": "host"},
        {"name": "claim", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}},
        {"name": "nfs", "nfs": {"path": "/export", "server": "192.0.2.5"}},
        {"downwardAPI": {"items": [
            {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}, "path": "labels"},
            {"path": "cpu", "resourceFieldRef": {"containerName": "app", "divisor": "1m", "resource": "limits.cpu"}}]},
         "name": "info"},
        {"name": "proj",
         "projected": {"defaultMode": 292, "sources": [
             {"serviceAccountToken": {"audience": "api", "expirationSeconds": 3600, "path": "token"}},
             {"configMap": {"items": [{"key": "a", "path": "ca"}], "name": "cm"}},
             {"secret": {"name": "s", "optional": False}},
             {"downwardAPI": {"items": [{"fieldRef": {"fieldPath": "metadata.name"}, "path": "name"}]}}]}}],
}


def test_debug_copy_of_a_rich_pod_round_trips_the_server_json() -> None:
    pod = decode(fixture("pod_debug_copy"))
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    assert pod["metadata"] == {"name": "rich-copy", "namespace": "default", "creationTimestamp": None,
                               "labels": {"app": "rich", "tier": "back"},
                               "annotations": {"empty": "", "note": "protobuf fixture"}}
    assert pod["status"] == {}
    spec = dict(pod["spec"])
    *containers, debugger = spec.pop("containers")
    expected = dict(RICH_SPEC)
    assert containers == expected.pop("containers")
    assert spec == expected
    assert (debugger["name"], debugger["image"], debugger["command"]) == ("dbg", "busybox", ["sleep", "1000"])


def test_unsupported_kind_from_kubectl_create_job() -> None:
    body = fixture("job")
    assert unwrap(body).kind == "Job" and unwrap(body).api_version == "batch/v1"
    with pytest.raises(UnsupportedKind) as info:
        decode(body)
    message = str(info.value)
    assert "kind Job" in message and "not supported in protobuf" in message and "send JSON" in message
    assert "\n" not in message
    assert isinstance(info.value, ProtobufError) and isinstance(info.value, ValueError)
    assert isinstance(info.value, UserError)


# -- envelope errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"k8s", b"{\"kind\": \"Pod\"}", b"k8s\x01" + fixture("namespace")[4:]])
def test_bad_magic_is_rejected(body: bytes) -> None:
    with pytest.raises(ProtobufError, match="magic"):
        decode(body)


def test_every_truncation_of_the_object_is_an_error() -> None:
    body = fixture("deployment")
    # The envelope ends with empty contentEncoding (field 3) and contentType (field 4).
    assert body.endswith(b"\x1a\x00\x22\x00")
    raw_end = len(body) - 4
    raw_start = raw_end - len(unwrap(body).raw)
    for cut in range(raw_start - 1, raw_end):
        with pytest.raises(ProtobufError, match="truncated"):
            decode(body[:cut])


def test_missing_kind_is_an_error() -> None:
    with pytest.raises(ProtobufError, match="no kind"):
        decode(envelope("v1", "", b""))


def test_wrapped_encodings_other_than_plain_protobuf_are_rejected() -> None:
    raw = ld(1, ld(1, "x"))
    with pytest.raises(ProtobufError, match="contentEncoding 'gzip'"):
        decode(envelope("v1", "Namespace", raw, encoding="gzip"))
    with pytest.raises(ProtobufError, match="contentType 'application/json'"):
        decode(envelope("v1", "Namespace", raw, content_type="application/json"))
    assert decode(envelope("v1", "Namespace", raw, content_type=pb.CONTENT_TYPE))["metadata"] == {"name": "x"}


def test_api_version_must_match_the_kind() -> None:
    with pytest.raises(UnsupportedKind, match="kind Deployment \\(extensions/v1beta1\\)"):
        decode(envelope("extensions/v1beta1", "Deployment", b""))


# -- wire format ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16384, 2**31 - 1, 2**32, 2**63, 2**64 - 1])
def test_varint_round_trip(value: int) -> None:
    data = b"\xaa" + varint(value) + b"\xbb"
    assert read_varint(data, 1) == (value, len(data) - 1)


def test_varint_errors() -> None:
    with pytest.raises(ProtobufError, match="truncated varint"):
        read_varint(b"\x80\x80", 0)
    with pytest.raises(ProtobufError, match="longer than 10 bytes"):
        read_varint(b"\xff" * 11 + b"\x01", 0)


def test_iter_fields_reads_all_four_wire_types() -> None:
    data = (vint(1, 150) + key(2, 1) + (7).to_bytes(8, "little") + ld(3, b"abc")
            + key(4, 5) + (9).to_bytes(4, "little"))
    assert list(iter_fields(data)) == [(1, WireType.VARINT, 150), (2, WireType.I64, 7),
                                       (3, WireType.LEN, b"abc"), (4, WireType.I32, 9)]


@pytest.mark.parametrize("data, match", [
    (key(1, 3) + b"\x00", "unsupported wire type 3"),
    (key(0, 0) + b"\x00", "field number 0"),
    (key(1, 2) + varint(5) + b"abc", "truncated"),
    (key(1, 1) + b"\x00" * 7, "truncated"),
    (key(1, 5) + b"\x00" * 3, "truncated"),
])
def test_malformed_wire_data(data: bytes, match: str) -> None:
    with pytest.raises(ProtobufError, match=match):
        list(iter_fields(data))


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    data = (ld(1, "web") + vint(99, 5) + ld(98, b"\x01\x02") + key(97, 1) + b"\x00" * 8
            + key(96, 5) + b"\x00" * 4 + ld(3, "ns"))
    assert decode_message(data, "ObjectMeta") == {"name": "web", "namespace": "ns"}


def test_nested_messages_and_negative_numbers() -> None:
    container = ld(1, "c") + ld(6, vint(3, 80) + ld(4, "UDP"))
    spec = ld(2, container) + vint(25, -7) + vint(4, 0) + vint(11, 0)
    assert decode_message(spec, "PodSpec") == {
        "containers": [{"name": "c", "ports": [{"containerPort": 80, "protocol": "UDP"}]}],
        "priority": -7,                       # int32 sent as a 10-byte varint
        "terminationGracePeriodSeconds": 0,   # a pointer: zero is meaningful
    }                                         # hostNetwork false (non-pointer) is dropped


def test_zero_scalars_follow_json_omitempty() -> None:
    # Go writes every non-pointer field; JSON drops the zero omitempty ones.
    port = ld(1, "") + vint(2, 0) + vint(3, 0) + ld(4, "") + ld(5, "")
    assert decode_message(port, "ContainerPort") == {"containerPort": 0}
    mount = ld(1, "v") + vint(2, 0) + ld(3, "/data") + ld(4, "")
    assert decode_message(mount, "VolumeMount") == {"name": "v", "mountPath": "/data"}


def test_repeated_scalars_packed_and_unpacked() -> None:
    packed = ld(4, varint(4000) + varint(5000)) + vint(4, 6000) + vint(4, -1)
    assert decode_message(packed, "PodSecurityContext") == {"supplementalGroups": [4000, 5000, 6000, -1]}
    strings = ld(1, "a") + ld(1, "") + ld(1, "c")
    assert decode_message(strings, "ExecAction") == {"command": ["a", "", "c"]}


def test_maps_of_strings_bytes_and_quantities() -> None:
    labels = ld(11, ld(1, "app") + ld(2, "web")) + ld(11, ld(1, "empty")) + ld(11, ld(1, "tier") + ld(2, "db"))
    assert decode_message(labels, "ObjectMeta") == {"labels": {"app": "web", "empty": "", "tier": "db"}}
    data = ld(2, ld(1, "k") + ld(2, b"\x00\xff")) + ld(4, ld(1, "plain") + ld(2, "text"))
    assert decode_message(data, "Secret") == {"data": {"k": "AP8="}, "stringData": {"plain": "text"}}
    limits = ld(1, ld(1, "cpu") + ld(2, ld(1, "500m"))) + ld(2, ld(1, "memory") + ld(2, ld(1, "1Gi")))
    assert decode_message(limits, "ResourceRequirements") == {"limits": {"cpu": "500m"},
                                                              "requests": {"memory": "1Gi"}}


def test_int_or_string() -> None:
    assert decode_message(ld(4, vint(1, 0) + vint(2, 8080) + ld(3, "")), "ServicePort") == {"targetPort": 8080}
    assert decode_message(ld(4, vint(1, 1) + vint(2, 0) + ld(3, "http")), "ServicePort") == {"targetPort": "http"}
    rolling = ld(1, vint(1, 1) + ld(3, "25%")) + ld(2, vint(2, 0))
    assert decode_message(rolling, "RollingUpdateDeployment") == {"maxUnavailable": "25%", "maxSurge": 0}


def test_times() -> None:
    def meta(time_payload: bytes) -> dict[str, Any]:
        return decode_message(ld(8, time_payload), "ObjectMeta")

    assert meta(b"") == {"creationTimestamp": None}
    assert meta(vint(1, 1767225600) + vint(2, 999)) == {"creationTimestamp": "2026-01-01T00:00:00Z"}
    assert meta(vint(1, 0)) == {"creationTimestamp": "1970-01-01T00:00:00Z"}
    assert meta(vint(1, -1)) == {"creationTimestamp": "1969-12-31T23:59:59Z"}
    assert meta(vint(1, -62135596800)) == {"creationTimestamp": None}  # Go's zero time.Time
    with pytest.raises(ProtobufError, match="out of range"):
        meta(vint(1, 2**62))


def test_inline_embedded_structs_merge_into_the_parent() -> None:
    probe = ld(1, ld(2, ld(1, "/healthz") + ld(2, vint(1, 0) + vint(2, 80)))) + vint(2, 3)
    assert decode_message(probe, "Probe") == {"httpGet": {"path": "/healthz", "port": 80}, "initialDelaySeconds": 3}
    volume = ld(1, "cfg") + ld(2, ld(19, ld(1, ld(1, "cm")) + vint(3, 420)))
    assert decode_message(volume, "Volume") == {"name": "cfg", "configMap": {"name": "cm", "defaultMode": 420}}


def test_a_singular_message_seen_twice_is_merged() -> None:
    data = ld(1, ld(1, "a")) + ld(1, ld(3, "ns"))
    assert decode_message(data, "Namespace") == {"metadata": {"name": "a", "namespace": "ns"}}


def test_wire_type_mismatch_names_the_field() -> None:
    with pytest.raises(ProtobufError, match=r"Pod\.metadata\.name: expected length-delimited"):
        decode(envelope("v1", "Pod", ld(1, vint(1, 5))))
    with pytest.raises(ProtobufError, match=r"Deployment\.spec\.replicas: expected a varint"):
        decode(envelope("apps/v1", "Deployment", ld(2, ld(1, "x"))))


def test_invalid_utf8_is_replaced_like_go_json() -> None:
    assert decode_message(ld(1, b"a\xffb"), "ObjectMeta") == {"name": "a\ufffdb"}


def test_unknown_message_type() -> None:
    with pytest.raises(ProtobufError, match="unknown message type"):
        decode_message(b"", "NoSuchMessage")


# -- the table itself ---------------------------------------------------------------------------------

def test_every_referenced_message_is_defined() -> None:
    for name, fields in MESSAGES.items():
        json_names = [spec.name for spec in fields.values() if not spec.inline]
        assert len(json_names) == len(set(json_names)), f"{name} has duplicate JSON names"
        for number, spec in fields.items():
            assert number > 0
            if spec.kind is Kind.MESSAGE:
                assert spec.message in MESSAGES, f"{name}.{spec.name} -> {spec.message}"
    for message in KINDS.values():
        assert message in MESSAGES


def test_the_table_has_no_cycles_so_nesting_is_bounded() -> None:
    def children(name: str) -> set[str]:
        return {spec.message for spec in MESSAGES[name].values() if spec.kind is Kind.MESSAGE}

    def depth(name: str, trail: tuple[str, ...]) -> int:
        assert name not in trail, " -> ".join(trail + (name,))
        return 1 + max((depth(child, trail + (name,)) for child in children(name)), default=0)

    assert max(depth(name, ()) for name in MESSAGES) < 20
