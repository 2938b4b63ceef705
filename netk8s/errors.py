"""The one error hierarchy of netk8s.

Library code raises these; the CLI maps them to exit codes at its top level
(``UserError`` -> 2, every other ``NetK8sError`` -> 1) and prints the message
as a single line. Messages name the field or path at fault and how to fix it.
"""

from __future__ import annotations


class NetK8sError(Exception):
    """Base class: an operation failed. CLI exit code 1."""

    exit_code = 1


class UserError(NetK8sError):
    """Bad usage or bad input (file, field, name). CLI exit code 2."""

    exit_code = 2


class ValidationError(UserError):
    """Input failed validation; ``path`` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}" if path else message)


class NotFoundError(UserError):
    """A named object (pod, node, cluster, file) does not exist."""


class ClusterExistsError(UserError):
    """A cluster with this name is already up."""


class KernelError(NetK8sError):
    """A kernel operation (netlink, iptables, namespaces) failed."""


class MissingKernelFeature(KernelError):
    """The running kernel lacks a feature a topology or command needs."""


class ApiError(NetK8sError):
    """The API server answered with a Kubernetes ``Status`` failure."""

    def __init__(self, code: int, reason: str, message: str, status: dict | None = None) -> None:
        self.code = code
        self.reason = reason
        self.status = status or {}
        super().__init__(message)

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        # 4xx are the caller's input (bad object, missing name); 5xx is ours.
        return 2 if 400 <= self.code < 500 and self.code not in (408, 409, 429) else 1
