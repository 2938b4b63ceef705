"""The ``netk8s`` command: kubectl-like, for emulated clusters.

Parses arguments, calls the library, prints. Every ``NetK8sError`` becomes a
one-line ``error: ...`` on stderr with its exit code (2 for bad usage or
input, 1 for a failed operation); tracebacks are reserved for bugs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from netk8s.errors import ApiError, NetK8sError, UserError

log = logging.getLogger("netk8s.cli")

OUTPUT_FORMATS = ("wide", "json", "yaml", "name")


def _common() -> argparse.ArgumentParser:
    # Global flags repeated on every subcommand (SUPPRESS keeps a top-level value).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster", default=argparse.SUPPRESS, metavar="NAME",
                        help="cluster to act on (default: the only one running)")
    return common


def _flag(text: str) -> bool:
    """A kubectl-style boolean flag value (``--watch=false``)."""
    value = text.strip().lower()
    if value in ("true", "1", "t", "yes"):
        return True
    if value in ("false", "0", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _listing_flags(parser: argparse.ArgumentParser) -> None:
    """kubectl's flags for naming or selecting objects of one type."""
    parser.add_argument("names", nargs="*")
    parser.add_argument("-n", "--namespace")
    parser.add_argument("-A", "--all-namespaces", action="store_true")
    parser.add_argument("-l", "--selector", help="label selector, e.g. app=web,tier!=db")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="netk8s", parents=[_common()],
                                     description="Packet-level Kubernetes cluster emulator.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library activity to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("up", parents=[common], help="bring a cluster up (default: 1 control-plane + 2 workers)")
    p.add_argument("-f", "--file", metavar="TOPOLOGY", help="topology YAML (default: built-in default cluster)")
    p.add_argument("--name", help="cluster name (overrides the topology's)")
    p.add_argument("--store", choices=("sqlite", "etcd"), help="the API server's store (overrides the topology's)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Ready nodes")

    p = sub.add_parser("down", parents=[common], help="tear a cluster down and remove everything it made")
    p.add_argument("--name", help="cluster to tear down")
    p.add_argument("--all", action="store_true", help="tear down every cluster")

    sub.add_parser("clusters", parents=[common], help="list running clusters")
    sub.add_parser("kubeconfig", parents=[common], help="print the path of the cluster's kubeconfig")

    p = sub.add_parser("apply", parents=[common], help="create or update objects from manifests")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                   help="manifest file, directory or - for stdin (repeatable)")
    p.add_argument("-n", "--namespace")

    p = sub.add_parser("get", parents=[common], help="list objects, like kubectl get")
    p.add_argument("resource", help="pods, services, nodes, deployments, replicasets, endpointslices, namespaces")
    _listing_flags(p)
    p.add_argument("--field-selector")
    p.add_argument("-o", "--output", choices=OUTPUT_FORMATS)

    p = sub.add_parser("describe", parents=[common], help="show objects in detail, with their events")
    p.add_argument("resource", help="TYPE, or TYPE/NAME (pods, services, deployments, replicasets, nodes, ...)")
    _listing_flags(p)

    p = sub.add_parser("delete", parents=[common], help="delete objects by name or from manifests")
    p.add_argument("resource", nargs="?")
    p.add_argument("names", nargs="*")
    p.add_argument("-f", "--filename", action="append", metavar="FILE")
    p.add_argument("-n", "--namespace")

    p = sub.add_parser("scale", parents=[common], help="set the replicas of a deployment or replicaset")
    p.add_argument("target", nargs="+", metavar="TARGET", help="deployment NAME, deployment/NAME, replicaset ...")
    p.add_argument("--replicas", type=int, required=True, help="the new number of replicas")
    p.add_argument("--current-replicas", type=int, help="only scale when it has this many now")
    p.add_argument("-n", "--namespace", default="default")

    p = sub.add_parser("rollout", parents=[common], help="follow a deployment's rollout")
    rollout_sub = p.add_subparsers(dest="action", metavar="ACTION")
    rollout_sub.required = True
    r = rollout_sub.add_parser("status", parents=[common], help="wait until a deployment's rollout is done")
    r.add_argument("target", nargs="+", metavar="TARGET", help="deployment NAME or deployment/NAME")
    r.add_argument("-n", "--namespace", default="default")
    r.add_argument("-w", "--watch", type=_flag, nargs="?", const=True, default=True,
                   help="keep watching until done (--watch=false: look once)")
    r.add_argument("--timeout", type=float, default=0, help="seconds to wait (0: no limit)")

    p = sub.add_parser("logs", parents=[common], help="print a container's log")
    p.add_argument("pod")
    p.add_argument("-c", "--container")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-p", "--previous", action="store_true", help="the previous instance's log")
    p.add_argument("--tail", type=int, default=None, help="lines from the end of the log (-1: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what the container writes")

    p = sub.add_parser("trace", parents=[common],
                       help="follow a connection's first packet through a node's kube-proxy rules")
    p.add_argument("destination", help="destination IP (a ClusterIP, node IP, load balancer or pod IP)")
    p.add_argument("port", type=int)
    p.add_argument("--from", dest="source", metavar="SOURCE",
                   help="a pod name, node/NAME (sent by the node), host/NAME or an IP (default: the --node itself)")
    p.add_argument("--node", help="the node whose rules apply (default: the source pod's node, or the "
                                  "node owning the destination)")
    p.add_argument("--proto", default="tcp", choices=("tcp", "udp", "sctp"))
    p.add_argument("-n", "--namespace", default="default")

    p = sub.add_parser("capture", parents=[common], help="capture packets in a pod, node, host, router or switch",
                       description="Run tcpdump in TARGET's network namespace: packet lines as they come, "
                                   "or a pcap file with -w. Stops after -c packets, --duration seconds or Ctrl-C.")
    p.add_argument("target", help="a pod name (or pod/NAME), node/NAME, host/NAME, router/NAME or switch/NAME")
    p.add_argument("filter", nargs="*", help="tcpdump filter, e.g. tcp port 8080 (default: every packet)")
    p.add_argument("-n", "--namespace", default="default", help="the pod's namespace")
    p.add_argument("-i", "--interface", default="any", help="interface in the target (default: any)")
    p.add_argument("-c", "--count", type=int, default=0, help="stop after this many packets")
    p.add_argument("-w", "--write", metavar="FILE", help="write a pcap file instead of printing packets")
    p.add_argument("--duration", type=float, help="stop after this many seconds")

    p = sub.add_parser("exec", parents=[common], help="run a command in a pod: netk8s exec POD -- CMD...")
    p.add_argument("pod")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-c", "--container", help="accepted for kubectl compatibility (pods share one namespace)")
    p.add_argument("-i", "--stdin", action="store_true", help="accepted for kubectl compatibility")
    p.add_argument("-t", "--tty", action="store_true", help="accepted for kubectl compatibility")

    for kind in ("node", "host", "router", "switch"):
        p = sub.add_parser(kind, parents=[common], help=f"act on an emulated {kind}")
        kind_sub = p.add_subparsers(dest="action", metavar="ACTION")
        kind_sub.required = True
        e = kind_sub.add_parser("exec", parents=[common], help=f"run a command in a {kind}'s namespace")
        e.add_argument("target", metavar=kind.upper())
        if kind == "node":
            e = kind_sub.add_parser("stop", parents=[common],
                                    help="stop the node's kubelet reporting (as if it died); pods keep running")
            e.add_argument("target", metavar="NODE")
            e = kind_sub.add_parser("start", parents=[common], help="let a stopped node's kubelet report again")
            e.add_argument("target", metavar="NODE")
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


# -- commands -------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from netk8s.cluster import lifecycle
    from netk8s.cluster.api import resolve_topology

    topo = resolve_topology(args.file, args.name, args.store)
    print(f'Creating cluster "{topo.name}" ({len(topo.nodes)} nodes, {len(topo.hosts)} external hosts) ...',
          flush=True)
    record = lifecycle.up(topo, timeout=args.timeout)
    from netk8s.cluster.state import StateDir

    state = StateDir(topo.name)
    print(f'Cluster "{topo.name}" is up: {len(topo.nodes)} nodes Ready; API server {record.server}')
    print(f"kubeconfig: {state.kubeconfig}")
    if record.etcd_endpoint:
        print(f"etcd: {record.etcd_endpoint} (etcdctl --endpoints {record.etcd_endpoint} get /registry --prefix "
              "--keys-only)")
    print(f"Try: netk8s get nodes -o wide        Stop: netk8s down --name {topo.name}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from netk8s.cluster import lifecycle
    from netk8s.cluster.state import list_clusters

    if args.all:
        names = list_clusters()
    else:
        names = [args.name or lifecycle.resolve_cluster(getattr(args, "cluster", None)).name]
    for name in names:
        report = lifecycle.down(name)
        extra = ""
        if report.namespaces or report.processes:  # only after a daemon that did not clean up itself
            extra = (f" (removed {report.namespaces} namespaces and {report.processes} processes left by a "
                     "stopped daemon)")
        print(f'Deleted cluster "{name}"{extra}')
        for err in report.errors:
            print(f"warning: {err}", file=sys.stderr)
    if not names:
        print("No clusters to delete.")
    return 0


def cmd_clusters(args: argparse.Namespace) -> int:
    from netk8s.cluster import lifecycle
    from netk8s.cluster.state import StateDir, list_clusters

    names = list_clusters()
    if not names:
        print("No clusters found.")
        return 0
    from netk8s.api.printers import format_table

    rows = []
    for name in names:
        try:
            record = StateDir(name).read()
            status = record.phase.value if lifecycle.daemon_alive(record) else "Stopped (run netk8s down)"
            rows.append([name, status, record.server if record.api_port else "-", record.created])
        except NetK8sError as exc:
            rows.append([name, f"Broken: {exc}", "-", "-"])
    sys.stdout.write(format_table(["NAME", "STATUS", "API SERVER", "CREATED"], rows))
    return 0


def _cluster(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from netk8s.cluster.api import Cluster

    return Cluster.attach(getattr(args, "cluster", None))


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    print(_cluster(args).kubeconfig)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from netk8s.api.manifests import load
    from netk8s.client.apply import apply

    manifests = [m for source in args.filename for m in load(source)]
    cluster = _cluster(args)
    for applied in apply(cluster.client, manifests, args.namespace):
        print(applied.describe())
    return 0


def _print_objects(resource, items: list[dict], output: str | None, single: bool,  # type: ignore[no-untyped-def]
                   with_namespace: bool) -> None:
    from netk8s.api.printers import format_table, table

    if output in ("json", "yaml"):
        if single and len(items) == 1:
            doc = items[0]
        else:
            doc = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
        if output == "json":
            print(json.dumps(doc, indent=4))
        else:
            import yaml

            sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
        return
    if output == "name":
        prefix = f"{resource.singular}.{resource.group}" if resource.group else resource.singular
        for obj in items:
            print(f"{prefix}/{obj['metadata']['name']}")
        return
    headers, rows = table(resource.kind, items, wide=output == "wide", with_namespace=with_namespace)
    sys.stdout.write(format_table(headers, rows))


def cmd_get(args: argparse.Namespace) -> int:
    from netk8s.api.resources import resolve_list

    resources = resolve_list(args.resource)
    if len(resources) > 1 or args.resource.lower() == "all":
        if args.names:
            raise UserError(f"get {args.resource}: name objects of one resource type only")
        return _get_many(args, resources)
    resource = resources[0]
    cluster = _cluster(args)
    all_ns = args.all_namespaces and resource.namespaced
    namespace = _namespace_for(args, resource)
    if args.names:
        items = []
        missing = []
        for name in args.names:
            try:
                items.append(cluster.client.get(resource, name, namespace))
            except ApiError as exc:
                if exc.code != 404:
                    raise
                missing.append(name)
        if items:
            _print_objects(resource, items, args.output, len(args.names) == 1, False)
        if missing:
            raise ApiError(404, "NotFound", "; ".join(f'{resource.group_resource} "{n}" not found' for n in missing))
        return 0
    listed = cluster.client.list(resource, namespace, args.selector, args.field_selector)
    items = listed.get("items") or []
    if not items and args.output not in ("json", "yaml"):
        _no_resources(namespace)
        return 0
    _print_objects(resource, items, args.output, False, bool(all_ns))
    return 0


def _namespace_for(args: argparse.Namespace, resource) -> str | None:  # type: ignore[no-untyped-def]
    if not resource.namespaced or args.all_namespaces:
        return None
    return args.namespace or "default"


def _no_resources(namespace: str | None) -> None:
    where = f" in {namespace} namespace" if namespace else ""
    print(f"No resources found{where}.", file=sys.stderr)


def _get_many(args: argparse.Namespace, resources: list) -> int:  # type: ignore[type-arg]
    """``get pods,svc`` / ``get all``: one table per type with ``kind/name`` names, or one List."""
    from netk8s.api.printers import format_table, table

    cluster = _cluster(args)
    found = []
    for resource in resources:
        items = cluster.client.list(resource, _namespace_for(args, resource), args.selector,
                                    args.field_selector).get("items") or []
        for obj in items:
            obj.setdefault("kind", resource.kind)
            obj.setdefault("apiVersion", resource.api_version)
        found.append((resource, items))
    if args.output in ("json", "yaml", "name"):
        every = [obj for _, items in found for obj in items]
        if args.output == "name":
            for resource, items in found:
                _print_objects(resource, items, "name", False, False)
            return 0
        _print_objects(resources[0], every, args.output, False, False)
        return 0
    blocks = []
    for resource, items in found:
        if not items:
            continue
        with_namespace = bool(args.all_namespaces and resource.namespaced)
        headers, rows = table(resource.kind, items, wide=args.output == "wide", with_namespace=with_namespace)
        name_column = 1 if with_namespace else 0
        prefix = f"{resource.singular}.{resource.group}" if resource.group else resource.singular
        for row in rows:
            row[name_column] = f"{prefix}/{row[name_column]}"
        blocks.append(format_table(headers, rows))
    if not blocks:
        _no_resources(None if args.all_namespaces else (args.namespace or "default"))
        return 0
    sys.stdout.write("\n".join(blocks))
    return 0


def _related(client, obj: dict):  # type: ignore[no-untyped-def]
    """What kubectl fetches to describe ``obj``: its events, and per kind its Endpoints, ReplicaSets,
    pods or Lease."""
    from netk8s.api import meta
    from netk8s.api.describe import Related
    from netk8s.api.resources import ENDPOINTS, EVENTS, LEASES, PODS, REPLICASETS, SECRETS
    from netk8s.client.rest import ignore_not_found

    kind, namespace, name = obj.get("kind"), meta.namespace_of(obj) or None, meta.name_of(obj)
    related = Related()
    # As kubectl does: the server picks the object's events (by uid), not a client-side scan of them all.
    uid = (obj.get("metadata") or {}).get("uid")
    wanted = f"involvedObject.uid={uid}" if uid else f"involvedObject.kind={kind},involvedObject.name={name}"
    related.events = client.list(EVENTS, namespace, field_selector=wanted)["items"]
    if kind == "Service":
        with ignore_not_found():
            related.endpoints = client.get(ENDPOINTS, name, namespace)
    elif kind == "Deployment":
        related.replicasets = client.list(REPLICASETS, namespace)["items"]
    elif kind == "ReplicaSet":
        related.pods = client.list(PODS, namespace)["items"]
    elif kind == "ServiceAccount":
        related.secrets = client.list(SECRETS, namespace)["items"]
    elif kind == "Node":
        related.pods = client.list(PODS, None, field_selector=f"spec.nodeName={name}")["items"]
        with ignore_not_found():
            related.lease = client.get(LEASES, name, "kube-node-lease")
    return related


def cmd_describe(args: argparse.Namespace) -> int:
    import datetime as _dt

    from netk8s.api.describe import describe
    from netk8s.api.resources import resolve

    kind, names = args.resource, list(args.names)
    if "/" in kind:
        kind, first = kind.split("/", 1)
        names.insert(0, first)
    resource = resolve(kind)
    cluster = _cluster(args)
    namespace = _namespace_for(args, resource)
    if names:
        objects = [cluster.client.get(resource, name, namespace) for name in names]
    else:
        objects = cluster.client.list(resource, namespace, args.selector)["items"]
        if not objects:
            _no_resources(namespace)
            return 0
    now = _dt.datetime.now(_dt.timezone.utc)
    texts = []
    for obj in objects:
        obj.setdefault("kind", resource.kind)
        texts.append(describe(obj, _related(cluster.client, obj), now))
    sys.stdout.write("\n\n".join(texts))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from netk8s.api.manifests import load
    from netk8s.api.resources import resolve
    from netk8s.client.apply import resolve_namespace

    cluster = _cluster(args)
    targets = []
    if args.filename:
        for source in args.filename:
            for m in load(source):
                targets.append((m.resource, m.name, resolve_namespace(m, args.namespace)))
    elif args.resource and args.names:
        resource = resolve(args.resource)
        ns = (args.namespace or "default") if resource.namespaced else None
        targets = [(resource, name, ns) for name in args.names]
    else:
        raise UserError("delete: give RESOURCE NAME... or -f FILE")
    for resource, name, ns in targets:
        cluster.client.delete(resource, name, ns)
        kind = f"{resource.singular}.{resource.group}" if resource.group else resource.singular
        print(f'{kind} "{name}" deleted')
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from netk8s.client.rollout import SCALABLE, parse_target, scale

    resource, name = parse_target(args.target, "scale", SCALABLE)
    cluster = _cluster(args)
    scale(cluster.client, resource, name, args.namespace, args.replicas, args.current_replicas)
    print(f"{resource.singular}.{resource.group}/{name} scaled")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from netk8s.api.resources import DEPLOYMENTS
    from netk8s.client.rollout import parse_target, wait_rollout

    _, name = parse_target(args.target, "rollout status", {"deployment": DEPLOYMENTS})
    cluster = _cluster(args)
    wait_rollout(cluster.client, name, args.namespace, args.timeout, lambda line: print(line, flush=True),
                 watch=args.watch)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from netk8s.api.resources import PODS

    cluster = _cluster(args)
    path = PODS.object_path(args.pod, args.namespace) + "/log"
    query = {"container": args.container, "previous": "true" if args.previous else None,
             "tailLines": args.tail if args.tail is not None and args.tail >= 0 else None}
    if not args.follow:
        sys.stdout.write(cluster.client.get_text(path, query))
        return 0
    try:
        for chunk in cluster.client.stream_text(path, dict(query, follow="true")):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    except KeyboardInterrupt:
        pass  # like kubectl logs -f: Ctrl-C ends the stream
    return 0


def _exec_in(prefix: list[str], command: list[str], env: dict[str, str] | None) -> int:
    if not command:
        raise UserError("missing command: use netk8s ... exec NAME -- COMMAND [ARGS...]")
    if os.geteuid() != 0:
        raise UserError("exec needs root (it enters network namespaces): run it with sudo")
    argv = [*prefix, *command]
    sys.stdout.flush()
    if env is None:
        os.execvp(argv[0], argv)
    os.execvpe(argv[0], argv, env)
    return 1  # not reached


def cmd_exec(args: argparse.Namespace, command: list[str]) -> int:
    from netk8s.cluster.api import pod_exec_target

    cluster = _cluster(args)
    prefix, env = pod_exec_target(cluster.client, cluster.name, args.pod, args.namespace)
    return _exec_in(prefix, command, env)


def cmd_trace(args: argparse.Namespace) -> int:
    from netk8s.proxy.trace import describe

    cluster = _cluster(args)
    node, result = cluster.trace(args.destination, args.port, args.proto, args.source, args.node, args.namespace)
    pods = {p["status"].get("podIP"): f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in cluster.list("pods") if (p.get("status") or {}).get("podIP")}
    mode = cluster.topology.proxy_mode.value
    print(f"{args.proto.upper()} {args.source or f'node/{node}'} -> {args.destination}:{args.port} "
          f"through node {node}'s {mode} rules")
    text = describe(result)
    for endpoint in result.endpoints:
        ip = endpoint.split(":", 1)[0]
        if ip in pods:
            text = text.replace(endpoint, f"{endpoint} ({pods[ip]})", 1)
    print(text)
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from pathlib import Path

    from netk8s.kernel.tcpdump import Tcpdump

    if args.count < 0:
        raise UserError(f"capture: --count {args.count} must be 0 (no limit) or more")
    if args.duration is not None and args.duration <= 0:
        raise UserError(f"capture: --duration {args.duration:g} must be more than 0 seconds")
    pcap = Path(args.write).resolve() if args.write else None
    if pcap is not None and not pcap.parent.is_dir():
        raise UserError(f"capture: -w {args.write}: directory {pcap.parent} does not exist")
    if os.geteuid() != 0:
        raise UserError("capture needs root (it enters network namespaces): run it with sudo")
    cluster = _cluster(args)
    netns_name, where = cluster.netns_of(args.target, args.namespace)

    def show(line: str) -> None:
        print(line, flush=True)
    dump = Tcpdump(netns_name, args.interface, " ".join(args.filter), args.count, pcap, where,
                   on_line=None if pcap else show)
    dump.start()
    assert dump.pid is not None
    pid = dump.pid
    cluster.track_process(pid, f"tcpdump in {where}")
    print(f"capturing in {where} on {args.interface}{f', writing {pcap}' if pcap else ''}; Ctrl-C to stop",
          file=sys.stderr, flush=True)
    try:
        dump.wait(args.duration)
    except KeyboardInterrupt:
        pass  # like tcpdump: Ctrl-C ends the capture, not in error
    finally:
        dump.stop()
        cluster.state.forget_pid(pid)
    captured = dump.captured()
    print(f"{'?' if captured is None else captured} packets captured", file=sys.stderr)
    return 0


def cmd_node_power(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    cluster.set_node_stopped(args.target, args.action == "stop")
    print(f"node/{args.target} {'stopped' if args.action == 'stop' else 'started'}")
    return 0


def cmd_machine_exec(args: argparse.Namespace, command: list[str]) -> int:
    cluster = _cluster(args)
    lookup = {"node": cluster.node, "host": cluster.host, "router": cluster.router, "switch": cluster.switch}
    return _exec_in(["ip", "netns", "exec", lookup[args.command](args.target).netns], command, None)


COMMANDS = {
    "up": cmd_up, "down": cmd_down, "clusters": cmd_clusters, "kubeconfig": cmd_kubeconfig,
    "apply": cmd_apply, "get": cmd_get, "delete": cmd_delete, "logs": cmd_logs, "trace": cmd_trace,
    "capture": cmd_capture, "scale": cmd_scale, "rollout": cmd_rollout, "describe": cmd_describe,
}


def main(argv: Sequence[str] | None = None) -> int:
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # A capture filter is free text ("tcp port 80") that may sit before or after the options:
    # argparse hands back the words it did not place.
    args, unplaced = parser.parse_known_args(own)
    if unplaced and args.command != "capture":
        parser.error(f"unrecognized arguments: {' '.join(unplaced)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "exec":
            return cmd_exec(args, command)
        if args.command == "node" and args.action in ("stop", "start"):
            if command:
                raise UserError(f"unexpected arguments after --: {' '.join(command)}")
            return cmd_node_power(args)
        if args.command in ("node", "host", "router", "switch"):
            return cmd_machine_exec(args, command)
        if args.command == "capture":
            unknown_options = [word for word in unplaced if word.startswith("-")]
            if unknown_options:
                raise UserError(f"capture: unknown option {unknown_options[0]}; put a filter that starts with "
                                "'-' after --")
            args.filter = [*args.filter, *unplaced, *command]
            return cmd_capture(args)
        if command:
            raise UserError(f"unexpected arguments after --: {' '.join(command)}")
        return COMMANDS[args.command](args)
    except ApiError as exc:
        reason = exc.reason or "Error"
        print(f"Error from server ({reason}): {exc}", file=sys.stderr)
        return exc.exit_code
    except NetK8sError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
