"""e2e fixtures: clusters registered here are torn down even when a test fails."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from netk8s.cluster.state import StateDir
from netk8s.testing.helpers import run_cli


@pytest.fixture
def down_on_exit() -> Iterator[Callable[[str], None]]:
    names: list[str] = []
    yield names.append
    for name in names:
        if StateDir(name).path.exists():
            run_cli("down", "--name", name)
