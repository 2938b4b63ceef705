"""pytest plugin: fixtures that bring a netk8s cluster up once per module and
always tear it down, even when tests fail or are interrupted.

Use in a test module::

    pytestmark = pytest.mark.netk8s_topology("topologies/two-node.yaml")  # optional

    def test_service(netk8s_cluster):
        netk8s_cluster.apply("app.yaml")
        ...

Cluster names are unique per module (``t<pid-hash>-<n>``), so test runs never
collide with each other or with a user's cluster. Heavy imports happen only
when a fixture is used, so loading the plugin costs nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from netk8s.cluster.api import Cluster

_counter = itertools.count(1)


def unique_cluster_name(prefix: str = "t") -> str:
    """A short cluster name unique to this process and call (valid as a cluster name)."""
    tag = hashlib.sha1(f"{os.getpid()}".encode()).hexdigest()[:5]
    return f"{prefix}{tag}-{next(_counter)}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "netk8s_topology(path): topology file for the module's netk8s_cluster fixture")


@pytest.fixture(scope="module")
def netk8s_cluster(request: pytest.FixtureRequest) -> Iterator["Cluster"]:
    """A running cluster for the whole module (default topology unless marked)."""
    from netk8s.cluster.api import Cluster

    marker = request.node.get_closest_marker("netk8s_topology")
    topology = marker.args[0] if marker and marker.args else None
    cluster = Cluster.up(topology=topology, name=unique_cluster_name())
    request.addfinalizer(cluster.down)
    yield cluster
