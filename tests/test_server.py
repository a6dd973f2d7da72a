"""The server extension: ``GET /perper-lab/fabrics`` of a real ``jupyter server`` against the real fabric.

The server is a subprocess started the way a user starts one, so these tests also check that the
installed package enables the extension (``jupyter-config/server-config/perper_lab.json``). Its
``PERPER_HOME`` is a directory of the test: it sees only the fabrics the test shows it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from jupyter_process import JupyterProcess, shut_down, start_jupyter

from perper_lab.runtime import register_function
from perper_lab.server import fabrics as fabrics_module
from perper_lab.streams import create_stream, open_stream

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "server"
KERNEL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"  # an embedded fabric's directory is named by its kernel's id
ANSWER_S = 8.0  # an unreachable fabric is reported within this (the server waits at most 4 s for one)


def fabrics(server: JupyterProcess, timeout: float = 30.0) -> list[dict]:
    reply = server.api("GET", "/perper-lab/fabrics", timeout=timeout)
    assert reply["error"] is None, reply
    return reply["fabrics"]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def write_ready(home: Path, kernel: str, address: str, pid: int) -> Path:
    directory = home / "embedded" / kernel
    directory.mkdir(parents=True)
    (directory / "ready.json").write_text(json.dumps({"address": address, "pid": pid}))
    return directory


@pytest.fixture(scope="module")
def server(fabric, tmp_path_factory):
    """A server that knows the session fabric three ways: PERPER_FABRIC, the embedded fabric of kernel
    KERNEL (its ready.json names a live pid: this one) and the local ``perper-lab fabric start`` fabric
    (its run directory is the session fabric's); plus an embedded fabric whose supervisor is gone."""
    workdir = tmp_path_factory.mktemp("jupyter")
    home = workdir / "perper-home"
    write_ready(home, KERNEL, fabric.address, os.getpid())
    write_ready(home, "gone-kernel", "127.0.0.1:1", dead_pid())
    (home / "fabric").symlink_to(fabric.run_dir, target_is_directory=True)
    started = start_jupyter(workdir, ARTIFACTS / "known-fabrics.log", lab=False,
                            env={"PERPER_FABRIC": fabric.address})
    try:
        yield started
    finally:
        shut_down(started)


def test_lists_the_streams_functions_and_workers_of_the_fabric(server, fabric, client, workers, unique_name):
    source = create_stream(client, unique_name("in"), partitions=2)
    writer = source.writer(batch_size=100)
    writer.extend(range(500))
    writer.close()

    def double(x):
        return 2 * x

    output = unique_name("out")
    register_function(client, double, output, [source.name])
    open_stream(client, output).wait_closed(60)
    growing = create_stream(client, unique_name("open"))
    appender = growing.writer(batch_size=10)
    appender.extend(range(30))
    appender.flush()

    found = fabrics(server)

    assert [f["address"] for f in found] == [fabric.address], found  # one fabric, known three ways
    entry = found[0]
    assert entry["error"] is None, entry
    assert [s["kind"] for s in entry["sources"]] == ["env", "embedded", "local"], entry["sources"]
    embedded = entry["sources"][1]
    assert embedded["kernel"] == KERNEL and embedded["kernel_of_this_server"] is False, embedded
    assert entry["sources"][2]["running_nodes"] == 1, entry["sources"]
    streams = {s["name"]: s for s in entry["streams"]}
    assert streams[source.name] == {"name": source.name, "partitions": 2, "items": 500, "closed": True,
                                    "producer": ""}
    assert streams[output] == {"name": output, "partitions": 2, "items": 500, "closed": True, "producer": output}
    assert streams[growing.name]["items"] == 30 and streams[growing.name]["closed"] is False
    function = next(f for f in entry["functions"] if f["output"] == output)
    assert {k: function[k] for k in ("function", "inputs", "kind", "parallelism", "state", "reason", "lag",
                                     "errors")} == {
        "function": "double", "inputs": [source.name], "kind": "map", "parallelism": 1, "state": "finished",
        "reason": "", "lag": 0, "errors": 0}
    assert isinstance(function["version"], str) and function["version"], function
    assert isinstance(function["workers"], list), function
    assert entry["workers"], "the workers fixture's worker is not listed"
    assert {"worker", "host", "pid", "heartbeat_age_s", "instances"} <= set(entry["workers"][0])

    appender.extend(range(12))  # the count follows the stream
    appender.flush()
    assert next(s for s in fabrics(server)[0]["streams"] if s["name"] == growing.name)["items"] == 42
    appender.close()


def test_an_unauthenticated_request_is_refused(server):
    status, _ = server.request("GET", "/perper-lab/fabrics", token=False)
    assert status == 403


@pytest.fixture
def silent_listener():
    """An address that accepts TCP connections and never answers (a stuck node, from the client's side)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # nobody listens there once the socket is closed


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_an_unreachable_fabric_is_an_entry_with_an_error_within_seconds(how, silent_listener, tmp_path):
    address = free_address() if how == "refused" else silent_listener
    home = tmp_path / "perper-home"
    write_ready(home, KERNEL, free_address(), os.getpid())  # a live supervisor whose fabric is gone
    server = start_jupyter(tmp_path, ARTIFACTS / f"unreachable-{how}.log", lab=False,
                           env={"PERPER_FABRIC": address})
    try:
        replies: list[tuple[float, list[dict]]] = []

        def ask_fabrics() -> None:
            started = time.monotonic()
            found = fabrics(server)
            replies.append((time.monotonic() - started, found))

        asking = threading.Thread(target=ask_fabrics)
        asking.start()
        time.sleep(0.3)
        started = time.monotonic()
        status = server.api("GET", "/api/status")  # the server answers meanwhile: the probes run off its loop
        status_took = time.monotonic() - started
        asking.join(30)
        assert replies, f"no answer from /perper-lab/fabrics within 30 s:\n{server.log_tail()}"
        took, found = replies[0]

        assert took < ANSWER_S, f"the answer took {took:.1f}s"
        assert "started" in status and status_took < 2.0, f"/api/status took {status_took:.1f}s"
        by_kind = {f["sources"][0]["kind"]: f for f in found}
        assert set(by_kind) == {"env", "embedded"}, found
        assert by_kind["env"]["address"] == address
        for entry in found:
            assert entry["error"] and entry["streams"] == [] and entry["functions"] == [], entry
        assert "127.0.0.1" in by_kind["env"]["error"], by_kind["env"]["error"]
        assert server.process.poll() is None, "the server died"
    finally:
        shut_down(server)


def test_a_slow_fabric_is_reported_without_waiting_and_queried_once(monkeypatch):
    """FabricMonitor alone: a status query slower than the answer timeout gives an error entry at the
    timeout; requests meanwhile share that one query; later requests show its late answer as stale."""
    calls = []

    def slow_status(address, timeout):
        calls.append(address)
        time.sleep(1.5)
        return {"streams": [{"name": "s"}], "functions": [], "workers": []}

    monkeypatch.setattr(fabrics_module, "fabric_status", slow_status)
    monkeypatch.setenv("PERPER_FABRIC", "127.0.0.1:1")
    monkeypatch.setenv("PERPER_HOME", "/nonexistent/perper-home")
    monitor = fabrics_module.FabricMonitor(answer_timeout=0.3)

    async def scenario():
        started = time.monotonic()
        first, second = await asyncio.gather(monitor.snapshot(), monitor.snapshot())
        waited = time.monotonic() - started
        await asyncio.sleep(1.5)
        return first, second, waited, await monitor.snapshot()

    try:
        first, second, waited, later = asyncio.run(scenario())
    finally:
        monitor.close()
    assert waited < 1.0, waited
    for reply in (first, second):
        assert "no answer from the fabric at 127.0.0.1:1 within 0.3s" in reply["fabrics"][0]["error"], reply
    slow = later["fabrics"][0]
    assert slow["error"] is None and slow["streams"] == [{"name": "s"}] and 0 < slow["stale_s"] < 5, slow
    assert calls == ["127.0.0.1:1", "127.0.0.1:1"], calls  # one for the two concurrent requests, one later
