"""ServiceAccounts controller: every active namespace has a ``default`` ServiceAccount.

Like kube-controller-manager's serviceaccount controller, it creates the
ServiceAccount named ``default`` in each namespace that is not terminating,
and again when someone deletes it. Pods name it in ``spec.serviceAccountName``
(the API server's admission sets it when a pod names none).
"""

from __future__ import annotations

import logging

from netk8s.api import meta
from netk8s.api.resources import NAMESPACES, SERVICEACCOUNTS
from netk8s.client.controller import Controller
from netk8s.errors import ApiError

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "default"


def wants_default_account(namespace: dict | None) -> bool:
    """A namespace gets a default ServiceAccount while it exists and is not being deleted."""
    if namespace is None:
        return False
    return not (namespace.get("metadata") or {}).get("deletionTimestamp") \
        and (namespace.get("status") or {}).get("phase", "Active") == "Active"


class ServiceAccountsController(Controller):
    name = "serviceaccount-controller"

    def setup(self) -> None:
        self.namespaces = self.informer(NAMESPACES)
        self.accounts = self.informer(SERVICEACCOUNTS, field_selector=f"metadata.name={DEFAULT_ACCOUNT}")
        self.namespaces.add_handler(self._on_namespace)
        self.accounts.add_handler(self._on_account)

    def _on_namespace(self, event: str, old: dict | None, new: dict | None) -> None:
        if new is not None:
            self.queue.add(meta.name_of(new))

    def _on_account(self, event: str, old: dict | None, new: dict | None) -> None:
        if event == "DELETED" and old is not None:
            self.queue.add(meta.namespace_of(old))

    def sync(self, key: str) -> None:
        if not wants_default_account(self.namespaces.get(key)) or self.accounts.get(f"{key}/{DEFAULT_ACCOUNT}"):
            return
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEFAULT_ACCOUNT}}
        try:
            self.client.create(SERVICEACCOUNTS, account, key)
        except ApiError as exc:
            if exc.code == 409:  # made meanwhile (our cache was behind)
                return
            if exc.code in (403, 404) and not wants_default_account(self.namespaces.get(key)):
                return  # the namespace began terminating or went away meanwhile
            raise
        log.info("%s: created service account %s", key, DEFAULT_ACCOUNT)
