"""Kubernetes ``Status`` failures: the error type of the API server.

``StatusError`` carries what kube-apiserver would answer (HTTP code, reason,
message, details); constructors below use kube-apiserver's wording, which
users and clients match on (``pods "x" not found``, ``... already exists``,
``the object has been modified; please apply your changes ...``).
"""

from __future__ import annotations

from typing import Any

from netk8s.api.resources import ResourceType
from netk8s.api.validation import FieldError, aggregate_message


class StatusError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def _details(resource: ResourceType, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": resource.plural}
    if resource.group:
        details["group"] = resource.group
    return details


def not_found(resource: ResourceType, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{resource.group_resource} "{name}" not found', _details(resource, name))


def already_exists(resource: ResourceType, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{resource.group_resource} "{name}" already exists',
                       _details(resource, name))


def conflict(resource: ResourceType, name: str) -> StatusError:
    return StatusError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {resource.group_resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        _details(resource, name))


def invalid(resource: ResourceType, name: str, errors: list[FieldError]) -> StatusError:
    details: dict[str, Any] = {"name": name, "kind": resource.kind}
    if resource.group:
        details["group"] = resource.group
    details["causes"] = [
        {"reason": e.type.value, "message": str(e)[len(e.path) + 2:], "field": e.path} for e in errors
    ]
    kind = f"{resource.kind}.{resource.group}" if resource.group else resource.kind
    return StatusError(422, "Invalid", aggregate_message(kind, name, errors), details)


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType", f'the body of the request was in an unknown format - '
                       f'accepted media types include: application/json-patch+json, '
                       f'application/merge-patch+json, application/strategic-merge-patch+json '
                       f'(got "{content_type}")')


def gone(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def internal(message: str) -> StatusError:
    return StatusError(500, "InternalError", f"Internal error occurred: {message}")


def path_not_found(path: str) -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource",
                       {"causes": [{"reason": "UnexpectedServerResponse", "message": f"404 page not found: {path}"}]})
