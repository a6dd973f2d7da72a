"""Shared fixtures: one real local fabric (Ignite node) for the whole session, a client, workers.

The fabric runs on a free port offset (never assume 10800 is free: a developer's fabric may be
running there) and is stopped at the end of the session; tests share it, so every test writes to
stream names of its own (see ``unique_name``).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from perper_lab.fabric.client import FabricClient
from perper_lab.fabric.launcher import LocalFabric, start_on_free_ports
from perper_lab.runtime.pool import WorkerPool


@pytest.fixture(scope="session")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFabric]:
    # exit_with_pid: the JVM also goes away if this pytest process is killed before teardown.
    local = start_on_free_ports(tmp_path_factory.mktemp("fabric"), exit_with_pid=os.getpid())
    try:
        yield local
    finally:
        local.stop()
        assert not any(node.running for node in local.status()), "the session fabric is still running"


@pytest.fixture
def client(fabric: LocalFabric) -> Iterator[FabricClient]:
    with FabricClient(fabric.address, timeout=10.0) as fabric_client:
        yield fabric_client


@pytest.fixture(scope="session")
def workers(fabric: LocalFabric, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    pool = WorkerPool(fabric.address, log_dir=tmp_path_factory.mktemp("workers"))
    pool.scale(1)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("in")`` -> a stream name no other test (or earlier session) has used."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:80]
    token = uuid.uuid4().hex[:8]

    def make(suffix: str = "s") -> str:
        return f"t_{base}_{token}_{suffix}"

    return make
