"""Versioned object store with watch: the API server's only persistence.

Objects are JSON-able dicts under etcd-style keys (``/registry/apps/deployments/ns/name``).
Every write takes the next value of one global, monotonically increasing
revision, stamped into ``metadata.resourceVersion`` as in etcd-backed Kubernetes.
Watches replay recent history from a revision (``TooOldError`` once it has
been compacted away, the API's ``410 Gone``) and then stream live events.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Protocol


class EventType(str, Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    key: str
    object: dict
    revision: int
    # The object before this change (MODIFIED and DELETED), so that watchers
    # with selectors can turn "stopped matching" into DELETED, as the API does.
    previous: dict | None = None


class StoreError(Exception):
    pass


class KeyExistsError(StoreError):
    pass


class KeyNotFoundError(StoreError):
    pass


class ConflictError(StoreError):
    """The caller's expected revision is not the object's current one."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"{key}: expected revision {expected}, found {actual}")
        self.expected = expected
        self.actual = actual


class TooOldError(StoreError):
    """The requested revision has been compacted out of the watch history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


WatchCallback = Callable[[WatchEvent], None]


class Subscription(Protocol):
    def cancel(self) -> None: ...


class Store(Protocol):
    """What the API server needs from a store (``SQLiteStore`` or ``EtcdStore``, both ``CachedStore``s)."""

    @property
    def revision(self) -> int: ...

    def get(self, key: str) -> dict | None: ...

    def list(self, prefix: str) -> tuple[list[dict], int]: ...

    def create(self, key: str, obj: dict) -> dict: ...

    def update(self, key: str, obj: dict, expected_revision: int | None = None) -> dict: ...

    def delete(self, key: str, expected_revision: int | None = None) -> dict: ...

    def watch(self, prefix: str, since: int, callback: WatchCallback) -> Subscription: ...

    def close(self) -> None: ...
