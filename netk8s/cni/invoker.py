"""Runtime side of CNI: what the kubelet uses to attach pods to a node's network.

A :class:`CniInvoker` holds one network configuration list and speaks CNI to
each plugin in it, in order for ADD/CHECK and in reverse for DEL, feeding each
plugin the previous plugin's result as ``prevResult``. Plugins run in the
node's network namespace: executables as ``nsenter --net=<node> -- <bin>``
with the ``CNI_*`` environment and the per-plugin configuration on stdin;
the built-in ``netk8s-cni`` may instead run in-process, with the calling
thread moved into the node namespace for the call. Both paths go through the
same plugin entry point, so they answer the same JSON.

Any plugin error becomes a :class:`CniFailure` naming the plugin type, the CNI
code and the plugin's message. Executables run with a bounded timeout.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netk8s.cni.types import (
    PLUGIN_TYPE,
    CNIError,
    Command,
    valid_identifier,
    version_at_least,
    version_tuple,
)
from netk8s.errors import NetK8sError, ValidationError
from netk8s.kernel import netns

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
NODE_CNI_VERSION = "1.0.0"  # the newest version Debian's reference plugins speak


class CniFailure(NetK8sError):
    """A plugin in the chain failed; ``code`` is the CNI error code (None when it gave no CNI error)."""

    def __init__(self, plugin_type: str, command: str, code: int | None, msg: str, details: str = "") -> None:
        self.plugin_type = plugin_type
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        code_text = f"code {code}" if code is not None else "no CNI error code"
        extra = f" ({details})" if details else ""
        super().__init__(f"CNI plugin {plugin_type} {command} failed ({code_text}): {msg}{extra}")


@dataclass(frozen=True)
class Attachment:
    """One pod interface on one network: what CNI keys its state by."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args)


# --------------------------------------------------------------------------- configuration lists


def validate_conflist(obj: Any, where: str = "conflist") -> dict[str, Any]:
    """Check a conflist's shape; returns a deep copy. A single plugin config is wrapped into a list."""
    if not isinstance(obj, dict):
        raise ValidationError(where, "a CNI network configuration must be a JSON object")
    conf = copy.deepcopy(obj)
    if "plugins" not in conf and "type" in conf:
        # A lone .conf: the whole object is the only plugin, as libcni treats it.
        conf = {"cniVersion": conf.get("cniVersion"), "name": conf.get("name"), "plugins": [conf]}
    name = conf.get("name")
    if not isinstance(name, str) or not valid_identifier(name):
        raise ValidationError(f"{where}.name", f"{name!r} is not a valid network name; use letters, digits, '_', "
                                               "'.' and '-', starting with a letter or digit")
    version = conf.get("cniVersion")
    if not isinstance(version, str):
        raise ValidationError(f"{where}.cniVersion", "required string such as \"1.0.0\"")
    try:
        version_tuple(version)
    except ValueError:
        raise ValidationError(f"{where}.cniVersion", f"{version!r} is not a version such as \"1.0.0\"") from None
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ValidationError(f"{where}.plugins", "required non-empty list of plugin configurations")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise ValidationError(f"{where}.plugins[{i}]", "must be a JSON object")
        ptype = plugin.get("type")
        if not isinstance(ptype, str) or not ptype or "/" in ptype or ptype in (".", ".."):
            raise ValidationError(f"{where}.plugins[{i}].type", f"{ptype!r} must name a plugin executable")
    for key in ("disableCheck", "disableGC"):
        if key in conf and not isinstance(conf[key], bool):
            raise ValidationError(f"{where}.{key}", "must be true or false")
    return conf


def load_conflist(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``.conflist`` (or single-plugin ``.conf``) file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ValidationError(str(p), "no such CNI configuration file") from None
    except OSError as exc:
        raise ValidationError(str(p), f"cannot read: {exc.strerror}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(str(p), f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    return validate_conflist(obj, where=str(p))


def node_conflist(network_name: str, pod_cidr: ipaddress.IPv4Network, data_dir: Path, mtu: int = 1500,
                  plugin_type: str = PLUGIN_TYPE) -> dict[str, Any]:
    """The per-node network: bridge cni0, gateway = first host of the pod CIDR, default route, host-local IPAM.

    ``plugin_type="bridge"`` gives the same network for the reference plugin.
    """
    cidr = ipaddress.IPv4Network(pod_cidr)
    gateway = cidr.network_address + 1
    ipam: dict[str, Any] = {
        "type": "host-local",
        "ranges": [[{"subnet": str(cidr), "gateway": str(gateway)}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": str(data_dir),
    }
    if plugin_type != PLUGIN_TYPE:
        # The reference bridge adds the isDefaultGateway route itself and then fails on the
        # identical host-local route with "file exists"; the default route comes from
        # isDefaultGateway alone there.
        del ipam["routes"]
    plugin = {
        "type": plugin_type,
        "bridge": "cni0",
        "isGateway": True,
        "isDefaultGateway": True,
        "hairpinMode": True,
        "ipMasq": False,
        "mtu": mtu,
        "ipam": ipam,
    }
    return {"cniVersion": NODE_CNI_VERSION, "name": network_name, "plugins": [plugin]}


# --------------------------------------------------------------------------- invoker


class CniInvoker:
    """Runs a conflist's plugins for attachments, in the node namespace ``host_netns``."""

    def __init__(self, conflist: dict, bin_dirs: list[str], host_netns: str, in_process: bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.conflist = validate_conflist(conflist)
        self.bin_dirs = [str(d) for d in bin_dirs]
        self.host_netns = netns.path_of(host_netns)
        self.in_process = in_process
        self.timeout = timeout

    @property
    def name(self) -> str:
        return str(self.conflist["name"])

    @property
    def cni_version(self) -> str:
        return str(self.conflist["cniVersion"])

    # ------------------------------------------------------------------ commands

    def add(self, att: Attachment) -> dict[str, Any]:
        """ADD through the chain; returns the last plugin's result.

        A failure is raised as is, without an automatic DEL: as the CNI spec has
        it, the caller follows every ADD, failed or not, with :meth:`delete`
        (an automatic DEL would also tear down a working attachment when ADD
        was called twice by mistake).
        """
        prev: dict[str, Any] | None = None
        for plugin in self.conflist["plugins"]:
            out = self._invoke(plugin, Command.ADD, att, prev)
            if not isinstance(out, dict):
                raise CniFailure(plugin["type"], "ADD", None, "returned no result JSON")
            prev = out
        assert prev is not None  # validate_conflist guarantees at least one plugin
        return prev

    def check(self, att: Attachment, prev_result: dict) -> None:
        """CHECK each plugin against the ADD result (skipped when the conflist sets disableCheck)."""
        if self.conflist.get("disableCheck") is True:
            return
        if not version_at_least(self.cni_version, "0.4.0"):
            raise NetK8sError(f"conflist {self.name}: cniVersion {self.cni_version} has no CHECK; use 0.4.0 or later")
        for plugin in self.conflist["plugins"]:
            self._invoke(plugin, Command.CHECK, att, prev_result)

    def delete(self, att: Attachment, prev_result: dict | None = None) -> None:
        """DEL in reverse order; every plugin is tried, the first failure is raised afterwards."""
        if prev_result is not None and not version_at_least(self.cni_version, "0.4.0"):
            prev_result = None  # before 0.4.0 DEL carried no prevResult
        failures: list[CniFailure] = []
        for plugin in reversed(self.conflist["plugins"]):
            try:
                self._invoke(plugin, Command.DEL, att, prev_result)
            except CniFailure as exc:
                log.warning("DEL %s: %s", att.container_id, exc)
                failures.append(exc)
        if failures:
            raise failures[0]

    # ------------------------------------------------------------------ one plugin

    def plugin_config(self, plugin: dict, prev_result: dict | None) -> dict[str, Any]:
        """What a plugin reads on stdin: its own config plus name, cniVersion and prevResult."""
        conf = copy.deepcopy(plugin)
        conf["name"] = self.name
        conf["cniVersion"] = self.cni_version
        if prev_result is not None:
            conf["prevResult"] = prev_result
        else:
            conf.pop("prevResult", None)
        return conf

    def environment(self, command: Command, att: Attachment) -> dict[str, str]:
        return {
            "CNI_COMMAND": command.value,
            "CNI_CONTAINERID": att.container_id,
            "CNI_NETNS": netns.path_of(att.netns) if att.netns else "",
            "CNI_IFNAME": att.ifname,
            "CNI_ARGS": att.cni_args(),
            "CNI_PATH": ":".join(self.bin_dirs),
        }

    def _invoke(self, plugin: dict, command: Command, att: Attachment,
                prev_result: dict | None) -> dict[str, Any] | None:
        ptype = str(plugin["type"])
        stdin = json.dumps(self.plugin_config(plugin, prev_result)).encode()
        env = self.environment(command, att)
        if self.in_process and ptype == PLUGIN_TYPE:
            return self._run_in_process(ptype, command, env, stdin)
        return self._run_executable(ptype, command, env, stdin)

    def _run_in_process(self, ptype: str, command: Command, env: dict[str, str],
                        stdin: bytes) -> dict[str, Any] | None:
        from netk8s.cni import plugin as builtin

        try:
            with netns.entered(self.host_netns):
                return builtin.execute(env, stdin)
        except CNIError as exc:
            raise CniFailure(ptype, command.value, exc.code, exc.msg, exc.details) from None
        except NetK8sError as exc:  # e.g. the node namespace is gone
            raise CniFailure(ptype, command.value, None, str(exc)) from None

    def find_plugin(self, ptype: str, command: str = "lookup") -> str:
        """The first ``<bin_dir>/<type>`` that is an executable file."""
        for d in self.bin_dirs:
            candidate = os.path.join(d, ptype)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise CniFailure(ptype, command, None,
                         f"no executable {ptype!r} in CNI bin dirs {':'.join(self.bin_dirs) or '(none)'}; "
                         "install the plugin or fix bin_dirs")

    def _run_executable(self, ptype: str, command: Command, env: dict[str, str],
                        stdin: bytes) -> dict[str, Any] | None:
        binary = self.find_plugin(ptype, command.value)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        full_env.update(env)
        argv = netns.nsenter_argv(self.host_netns, [binary])
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, env=full_env, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise CniFailure(ptype, command.value, None, f"timed out after {self.timeout}s") from None
        out = proc.stdout.decode(errors="replace").strip()
        if proc.returncode != 0:
            code, msg, details = None, "", ""
            try:
                err = json.loads(out) if out else None
            except json.JSONDecodeError:
                err = None
            if isinstance(err, dict) and "code" in err:
                code = err.get("code") if isinstance(err.get("code"), int) else None
                msg = str(err.get("msg", ""))
                details = str(err.get("details", "") or "")
            if not msg:
                lines = (proc.stderr.decode(errors="replace").strip() or out).splitlines()
                msg = lines[-1] if lines else f"exit status {proc.returncode}"
            raise CniFailure(ptype, command.value, code, msg, details)
        if command is not Command.ADD and command is not Command.VERSION:
            return None
        try:
            result = json.loads(out)
        except json.JSONDecodeError:
            raise CniFailure(ptype, command.value, None, f"printed no JSON result: {out[:200]!r}") from None
        if not isinstance(result, dict):
            raise CniFailure(ptype, command.value, None, "printed a result that is not a JSON object")
        return result
