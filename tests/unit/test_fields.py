"""Unit tests for netk8s.api.fields: the known-field table and strict field validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from netk8s.api.fields import (
    KINDS,
    STRUCTURES,
    TypeKind,
    drop_unknown_fields,
    field_at,
    kind_structure,
    list_patch_meta,
    referenced,
    strict_error,
    unknown_field_warnings,
    unknown_fields,
)
from netk8s.api.resources import RESOURCES

ROOT = Path(__file__).resolve().parents[2]

DEPLOYMENT: dict[str, Any] = yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: front}
  annotations: {deployment.kubernetes.io/revision: "3"}
  ownerReferences:
    - {apiVersion: v1, kind: ConfigMap, name: owner, uid: 1234, controller: false, blockOwnerDeletion: true}
  finalizers: [example.com/keep]
spec:
  replicas: 3
  revisionHistoryLimit: 5
  progressDeadlineSeconds: 120
  minReadySeconds: 2
  paused: false
  selector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [front]}]
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 25%, maxUnavailable: 1}
  template:
    metadata:
      labels: {app: web, tier: front}
      annotations: {prometheus.io/scrape: "true"}
    spec:
      serviceAccountName: web
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 30
      dnsPolicy: ClusterFirst
      dnsConfig:
        nameservers: [1.1.1.1]
        searches: [shop.svc.cluster.local]
        options: [{name: ndots, value: "2"}]
      hostAliases: [{ip: 10.0.0.1, hostnames: [db.local]}]
      nodeSelector: {kubernetes.io/os: linux}
      priorityClassName: high
      enableServiceLinks: false
      shareProcessNamespace: true
      imagePullSecrets: [{name: registry}]
      readinessGates: [{conditionType: example.com/ready}]
      securityContext:
        runAsUser: 1000
        runAsGroup: 3000
        runAsNonRoot: true
        fsGroup: 2000
        fsGroupChangePolicy: OnRootMismatch
        supplementalGroups: [4000]
        sysctls: [{name: net.ipv4.ip_local_port_range, value: "1024 65535"}]
        seccompProfile: {type: RuntimeDefault}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{key: disk, operator: In, values: [ssd]}]
                matchFields: [{key: metadata.name, operator: NotIn, values: [control-plane]}]
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 10
              preference: {matchExpressions: [{key: zone, operator: Exists}]}
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                labelSelector: {matchLabels: {app: web}}
                topologyKey: kubernetes.io/hostname
                matchLabelKeys: [pod-template-hash]
        podAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {app: cache}}
              namespaceSelector: {}
              topologyKey: topology.kubernetes.io/zone
      tolerations:
        - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}
        - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 30}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector: {matchLabels: {app: web}}
          minDomains: 2
          nodeAffinityPolicy: Honor
          nodeTaintsPolicy: Ignore
      initContainers:
        - name: init
          image: busybox
          command: [sh, -c, "echo ready > /work/flag"]
          volumeMounts: [{name: work, mountPath: /work}]
        - name: log-shipper
          image: busybox
          restartPolicy: Always
          args: [tail, -F, /var/log/app.log]
      containers:
        - name: web
          image: netk8s/echo:1.0
          imagePullPolicy: IfNotPresent
          workingDir: /srv
          ports:
            - {name: http, containerPort: 8080, protocol: TCP}
            - {name: metrics, containerPort: 9090, hostPort: 19090, hostIP: 0.0.0.0}
          env:
            - {name: MODE, value: production}
            - name: POD_IP
              valueFrom: {fieldRef: {apiVersion: v1, fieldPath: status.podIP}}
            - name: CPU_LIMIT
              valueFrom: {resourceFieldRef: {containerName: web, resource: limits.cpu, divisor: 1m}}
            - name: DB_HOST
              valueFrom: {configMapKeyRef: {name: web-config, key: db, optional: true}}
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: web-secret, key: password}}
          envFrom:
            - {prefix: CFG_, configMapRef: {name: web-config}}
            - secretRef: {name: web-secret, optional: true}
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: "1", memory: 128Mi, ephemeral-storage: 1Gi}
          resizePolicy: [{resourceName: cpu, restartPolicy: NotRequired}]
          readinessProbe:
            httpGet:
              path: /healthz
              port: http
              scheme: HTTP
              httpHeaders: [{name: X-Probe, value: "1"}]
            initialDelaySeconds: 1
            periodSeconds: 2
            timeoutSeconds: 1
            successThreshold: 1
            failureThreshold: 3
          livenessProbe:
            tcpSocket: {port: 8080}
            terminationGracePeriodSeconds: 10
          startupProbe:
            exec: {command: [cat, /work/flag]}
            failureThreshold: 30
          lifecycle:
            postStart: {exec: {command: [sh, -c, "true"]}}
            preStop: {sleep: {seconds: 5}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            privileged: false
            capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
            seccompProfile: {type: Localhost, localhostProfile: profiles/web.json}
            appArmorProfile: {type: RuntimeDefault}
            seLinuxOptions: {level: "s0:c123,c456"}
            procMount: Default
          volumeMounts:
            - {name: work, mountPath: /work}
            - {name: config, mountPath: /etc/web, readOnly: true}
            - {name: secret, mountPath: /etc/secret, readOnly: true, recursiveReadOnly: IfPossible}
            - {name: host, mountPath: /host/log, mountPropagation: HostToContainer}
            - {name: all, mountPath: /etc/all}
            - {name: info, mountPath: /etc/podinfo, subPath: labels}
            - {name: data, mountPath: /data, subPathExpr: $(POD_NAME)}
          terminationMessagePath: /dev/termination-log
          terminationMessagePolicy: FallbackToLogsOnError
          stdin: false
          tty: false
        - name: grpc
          image: example/grpc
          livenessProbe:
            grpc: {port: 9000, service: health}
      volumes:
        - {name: work, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
        - name: config
          configMap:
            name: web-config
            defaultMode: 0644
            items: [{key: app.conf, path: app.conf, mode: 0600}]
        - name: secret
          secret: {secretName: web-secret, optional: false}
        - {name: host, hostPath: {path: /var/log, type: Directory}}
        - name: all
          projected:
            defaultMode: 0440
            sources:
              - serviceAccountToken: {audience: api, expirationSeconds: 3600, path: token}
              - configMap: {name: web-config, items: [{key: a, path: a}]}
              - secret: {name: web-secret}
              - downwardAPI:
                  items: [{path: name, fieldRef: {fieldPath: metadata.name}}]
        - name: info
          downwardAPI:
            items:
              - {path: labels, fieldRef: {fieldPath: metadata.labels}}
              - {path: cpu, resourceFieldRef: {containerName: web, resource: requests.cpu}}
        - {name: data, persistentVolumeClaim: {claimName: web-data, readOnly: false}}
        - {name: nfs, nfs: {server: 10.0.0.5, path: /exports}}
        - name: scratch
          ephemeral:
            volumeClaimTemplate:
              metadata: {labels: {type: scratch}}
              spec:
                accessModes: [ReadWriteOnce]
                storageClassName: fast
                resources: {requests: {storage: 1Gi}}
""")

SERVICE: dict[str, Any] = yaml.safe_load("""
apiVersion: v1
kind: Service
metadata: {name: web, labels: {app: web}}
spec:
  type: NodePort
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30080, protocol: TCP, appProtocol: http}
    - {name: metrics, port: 9090, targetPort: 9090}
  externalTrafficPolicy: Local
  internalTrafficPolicy: Cluster
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv4]
  externalIPs: [172.18.0.100]
  publishNotReadyAddresses: false
  trafficDistribution: PreferClose
""")

OTHERS: list[dict[str, Any]] = list(yaml.safe_load_all("""
apiVersion: v1
kind: Pod
metadata: {name: debug, labels: {run: debug}}
spec:
  hostNetwork: true
  nodeName: worker
  restartPolicy: Never
  os: {name: linux}
  schedulingGates: [{name: example.com/wait}]
  containers:
    - {name: sh, image: busybox, command: [sleep, infinity], stdin: true, tty: true}
status:
  phase: Running
  anything: [goes, here]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
spec: {finalizers: [kubernetes]}
---
apiVersion: v1
kind: Node
metadata: {name: worker3, labels: {kubernetes.io/hostname: worker3}}
spec:
  podCIDR: 10.244.3.0/24
  podCIDRs: [10.244.3.0/24]
  unschedulable: true
  taints: [{key: dedicated, value: infra, effect: NoSchedule}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {app.conf: "x=1"}
binaryData: {blob: aGVsbG8=}
immutable: false
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret}
type: Opaque
data: {password: czNjcjN0}
stringData: {user: admin}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web}
automountServiceAccountToken: false
imagePullSecrets: [{name: registry}]
secrets: [{name: web-token}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: external-db}
subsets:
  - addresses: [{ip: 192.0.2.10, hostname: db, nodeName: worker, targetRef: {kind: Pod, name: db, namespace: default}}]
    notReadyAddresses: [{ip: 192.0.2.11}]
    ports: [{name: pg, port: 5432, protocol: TCP, appProtocol: postgresql}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP, appProtocol: http}]
endpoints:
  - addresses: [10.244.1.2]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: worker
    zone: a
    hints: {forZones: [{name: a}]}
    targetRef: {kind: Pod, name: web-1, namespace: default, uid: abc}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector: {matchLabels: {role: frontend}}
        - namespaceSelector: {matchLabels: {team: a}}
          podSelector: {matchExpressions: [{key: role, operator: Exists}]}
        - ipBlock: {cidr: 172.18.0.0/16, except: [172.18.0.1/32]}
      ports: [{protocol: TCP, port: 8080}, {protocol: TCP, port: 30000, endPort: 32767}]
  egress:
    - to: [{ipBlock: {cidr: 10.96.0.10/32}}]
      ports: [{protocol: UDP, port: dns}]
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: worker, namespace: kube-node-lease}
spec:
  holderIdentity: worker
  leaseDurationSeconds: 40
  renewTime: "2024-05-01T12:00:00.000000Z"
  acquireTime: "2024-05-01T11:00:00.000000Z"
  leaseTransitions: 1
---
apiVersion: v1
kind: Event
metadata: {name: web-1.17c, namespace: default}
involvedObject: {kind: Pod, name: web-1, namespace: default, fieldPath: "spec.containers{web}"}
reason: Pulled
message: Container image already present on machine
type: Normal
source: {component: kubelet, host: worker}
firstTimestamp: "2024-05-01T12:00:00Z"
lastTimestamp: "2024-05-01T12:00:00Z"
count: 1
reportingComponent: kubelet
reportingInstance: worker
series: {count: 2, lastObservedTime: "2024-05-01T12:00:00.000000Z"}
"""))


def other(kind: str) -> dict:
    return next(d for d in OTHERS if d["kind"] == kind)


def echo_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "topologies/apps/echo.yaml").read_text()) if d]


# --- valid manifests --------------------------------------------------------------------------

@pytest.mark.parametrize("doc", echo_documents() + [DEPLOYMENT, SERVICE] + OTHERS,
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_valid_manifests_have_no_unknown_fields(doc: dict) -> None:
    assert unknown_fields(doc["kind"], doc) == []


def test_replicaset_and_pod_share_the_pod_template_fields() -> None:
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-abc"},
          "spec": copy.deepcopy({k: DEPLOYMENT["spec"][k] for k in ("replicas", "selector", "template")})}
    assert unknown_fields("ReplicaSet", rs) == []
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": DEPLOYMENT["spec"]["template"]["metadata"],
           "spec": DEPLOYMENT["spec"]["template"]["spec"]}
    assert unknown_fields("Pod", pod) == []


# --- typos ------------------------------------------------------------------------------------

def _set(path: list[Any], key: str, value: Any = 1) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        node: Any = doc
        for part in path:
            node = node[part]
        node[key] = value
    return mutate


_TMPL = ["spec", "template", "spec"]


@pytest.mark.parametrize("base,mutate,expected", [
    (DEPLOYMENT, _set(["spec"], "replica", 2), ["spec.replica"]),
    (DEPLOYMENT, _set(_TMPL + ["containers", 0], "imagePullPolicyy", "Always"),
     ["spec.template.spec.containers[0].imagePullPolicyy"]),
    (DEPLOYMENT, _set(["metadata"], "lables", {}), ["metadata.lables"]),
    (DEPLOYMENT, _set(["spec", "template", "metadata"], "label", {}), ["spec.template.metadata.label"]),
    (DEPLOYMENT, _set(["spec", "strategy", "rollingUpdate"], "maxSurgeX", 1),
     ["spec.strategy.rollingUpdate.maxSurgeX"]),
    (DEPLOYMENT, _set(_TMPL + ["containers", 1, "livenessProbe", "grpc"], "serviceName", "x"),
     ["spec.template.spec.containers[1].livenessProbe.grpc.serviceName"]),
    (DEPLOYMENT, _set(_TMPL + ["containers", 0, "readinessProbe", "httpGet", "httpHeaders", 0], "val", "1"),
     ["spec.template.spec.containers[0].readinessProbe.httpGet.httpHeaders[0].val"]),
    (DEPLOYMENT, _set(_TMPL + ["containers", 0, "env", 1, "valueFrom", "fieldRef"], "path", "x"),
     ["spec.template.spec.containers[0].env[1].valueFrom.fieldRef.path"]),
    (DEPLOYMENT, _set(_TMPL + ["volumes", 4, "projected", "sources", 0, "serviceAccountToken"], "aud", "x"),
     ["spec.template.spec.volumes[4].projected.sources[0].serviceAccountToken.aud"]),
    (DEPLOYMENT, _set(_TMPL + ["volumes", 0], "emptydir", {}), ["spec.template.spec.volumes[0].emptydir"]),
    (DEPLOYMENT, _set(_TMPL + ["affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution",
                               "nodeSelectorTerms", 0, "matchExpressions", 0], "value", ["a"]),
     ["spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
      ".nodeSelectorTerms[0].matchExpressions[0].value"]),
    (DEPLOYMENT, _set(_TMPL + ["securityContext"], "runAsUserName", "x"),
     ["spec.template.spec.securityContext.runAsUserName"]),
    (DEPLOYMENT, _set(_TMPL + ["tolerations", 1], "seconds", 3), ["spec.template.spec.tolerations[1].seconds"]),
    (DEPLOYMENT, _set(_TMPL + ["initContainers", 0], "ports", [{"containerPort": 1, "hostport": 2}]),
     ["spec.template.spec.initContainers[0].ports[0].hostport"]),
    (SERVICE, _set(["spec", "ports", 1], "target_port", 80), ["spec.ports[1].target_port"]),
    (SERVICE, _set(["spec"], "clusterIp", "10.96.0.5"), ["spec.clusterIp"]),
    (other("NetworkPolicy"), _set(["spec", "ingress", 0, "from", 2, "ipBlock"], "excepts", []),
     ["spec.ingress[0].from[2].ipBlock.excepts"]),
    (other("EndpointSlice"), _set(["endpoints", 0, "conditions"], "healthy", True),
     ["endpoints[0].conditions.healthy"]),
    (other("ConfigMap"), _set([], "datas", {}), ["datas"]),
])
def test_typos_give_kubernetes_paths(base: dict, mutate: Callable[[dict], None], expected: list[str]) -> None:
    doc = copy.deepcopy(base)
    mutate(doc)
    assert unknown_fields(doc["kind"], doc) == expected


def test_several_unknown_fields_in_document_order() -> None:
    doc = copy.deepcopy(DEPLOYMENT)
    doc["spec"]["replica"] = 2
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    doc["spec"]["template"]["spec"]["containers"][1]["foo"] = {"bar": 1}
    doc["extra"] = True
    # Keys added last come last, as they would in the JSON text.
    assert unknown_fields("Deployment", doc) == [
        "spec.template.spec.containers[0].imagePullPolicyy",
        "spec.template.spec.containers[1].foo",
        "spec.replica",
        "extra",
    ]


def test_status_is_never_checked_but_is_unknown_where_the_kind_has_none() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []},
           "status": {"phaze": "Running", "containerStatuses": [{"nonsense": 1}]}}
    assert unknown_fields("Pod", pod) == []
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "status": {}}
    assert unknown_fields("ConfigMap", cm) == ["status"]


def test_free_form_and_mistyped_values_are_not_descended() -> None:
    doc = copy.deepcopy(DEPLOYMENT)
    spec = doc["spec"]["template"]["spec"]
    spec["volumes"].append({"name": "old", "gitRepo": {"repository": "https://example.com/x.git", "anything": 1}})
    spec["containers"][0]["resources"]["limits"]["example.com/gpu"] = 1
    doc["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    spec["affinity"] = "not an object"
    assert unknown_fields("Deployment", doc) == []


def test_unknown_kinds_and_non_objects_have_no_unknown_fields() -> None:
    assert unknown_fields("CronJob", {"spec": {"whatever": 1}}) == []
    assert unknown_fields("Pod", []) == []  # type: ignore[arg-type]
    assert unknown_fields("Pod", {"apiVersion": "v1", "kind": "Pod"}) == []


def test_drop_unknown_fields_keeps_everything_else() -> None:
    doc = copy.deepcopy(DEPLOYMENT)
    doc["spec"]["replica"] = 2
    doc["metadata"]["lables"] = {"a": "b"}
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    doc["status"] = {"replicas": 1, "whatever": True}
    pruned = drop_unknown_fields("Deployment", doc)
    assert unknown_fields("Deployment", pruned) == []
    assert pruned == {**DEPLOYMENT, "status": {"replicas": 1, "whatever": True}}
    assert "replica" in doc["spec"]  # the input is left alone
    cm = drop_unknown_fields("ConfigMap", {"kind": "ConfigMap", "metadata": {"name": "c"}, "status": {}})
    assert cm == {"kind": "ConfigMap", "metadata": {"name": "c"}}
    assert drop_unknown_fields("CronJob", {"spec": {"x": 1}}) == {"spec": {"x": 1}}


# --- error text -------------------------------------------------------------------------------

def test_strict_error_text() -> None:
    assert strict_error(["spec.replica"]) == 'strict decoding error: unknown field "spec.replica"'
    assert strict_error(["a", "b.c[0].d"]) == \
        'strict decoding error: unknown field "a", unknown field "b.c[0].d"'
    assert unknown_field_warnings(["spec.replica"]) == ['unknown field "spec.replica"']


# --- the table itself -------------------------------------------------------------------------

def test_every_served_kind_is_described() -> None:
    for r in RESOURCES:
        struct = kind_structure(r.kind)
        assert struct is not None, r.kind
        assert {"apiVersion", "kind", "metadata"} <= set(struct.fields), r.kind
    assert set(KINDS) == {r.kind for r in RESOURCES}


def test_every_reference_resolves_and_is_reachable_from_the_kinds() -> None:
    reachable = set(referenced(KINDS.values()))
    for struct in STRUCTURES.values():
        for spec in struct.fields.values():
            ftype = spec.type
            while ftype.item is not None:
                ftype = ftype.item
            if ftype.kind is TypeKind.OBJECT:
                assert ftype.ref in STRUCTURES, (struct.name, spec.name)
    api_only = (".Status", ".StatusDetails", ".StatusCause", ".ListMeta", ".DeleteOptions", ".Preconditions")
    meta_only = {n for n in STRUCTURES if n.endswith(api_only)}
    assert set(STRUCTURES) - reachable == meta_only


def test_list_patch_metadata() -> None:
    assert list_patch_meta("Deployment", ["spec", "template", "spec", "containers"]) == ("name", "merge")
    assert list_patch_meta("Pod", ["spec", "volumes"]) == ("name", "merge,retainKeys")
    assert list_patch_meta("Pod", ["spec", "containers", "ports"]) == ("containerPort", "merge")
    assert list_patch_meta("Service", ["spec", "ports"]) == ("port", "merge")
    assert list_patch_meta("Pod", ["metadata", "ownerReferences"]) == ("uid", "merge")
    assert list_patch_meta("Pod", ["spec", "tolerations"]) is None  # replaced whole
    assert list_patch_meta("Pod", ["spec", "nope"]) is None
    ports = field_at("Service", ["spec", "ports"])
    assert ports is not None and ports.list_type == "map" and ports.list_map_keys == ("port", "protocol")
    assert field_at("Deployment", ["spec", "strategy"]).patch_strategy == "retainKeys"  # type: ignore[union-attr]


def test_required_fields() -> None:
    assert STRUCTURES["io.k8s.api.core.v1.Container"].required == ["name"]
    assert STRUCTURES["io.k8s.api.apps.v1.DeploymentSpec"].required == ["selector", "template"]
    assert STRUCTURES["io.k8s.api.core.v1.PodSpec"].required == ["containers"]


_MODEL_PREFIXES = {"io.k8s.api.core.v1": ("CoreV1", "V1"), "io.k8s.apimachinery.pkg.apis.meta.v1": ("V1",),
                   "io.k8s.api.discovery.v1": ("DiscoveryV1", "V1")}


def test_fields_exist_in_the_official_client_models() -> None:
    """Every field the table lists is a real Kubernetes field (per the kubernetes client's models)."""
    models = pytest.importorskip("kubernetes.client.models")
    for name, struct in STRUCTURES.items():
        pkg, short = name.rsplit(".", 1)
        cls = None
        for prefix in _MODEL_PREFIXES.get(pkg, ("V1",)):
            cls = getattr(models, prefix + short, None)
            if cls is not None:
                break
        assert cls is not None, name
        attribute_map = getattr(cls, "attribute_map", None)
        if attribute_map is None:  # pydantic-generated clients
            attribute_map = {k: (v.alias or k) for k, v in cls.model_fields.items()}
        theirs = set(attribute_map.values())
        assert set(struct.fields) <= theirs, (name, sorted(set(struct.fields) - theirs))
