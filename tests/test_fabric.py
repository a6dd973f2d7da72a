"""Reaching, starting and stopping fabrics: errors that say what to do, and no stray JVMs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perper_lab.errors import FabricError, FabricStartError, FabricUnavailable
from perper_lab.fabric.client import FabricClient
from perper_lab.fabric.launcher import LocalFabric, find_java, free_port_offset, start_on_free_ports

PERPER_LAB = Path(sys.executable).with_name("perper-lab")


def unused_port() -> int:
    """A port that nothing listens on (the OS just handed it out and it was released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pid_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait until no process with this pid exists any more (init reaps the orphaned JVM's zombie)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        try:
            if b"perper-fabric" not in Path(f"/proc/{pid}/cmdline").read_bytes() and pid_alive(pid):
                return True  # the pid was reused by an unrelated process
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists and has not exited (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_client_without_a_fabric_raises_fabric_unavailable_quickly():
    address = f"127.0.0.1:{unused_port()}"
    started = time.monotonic()

    with pytest.raises(FabricUnavailable) as caught:
        FabricClient(address)

    elapsed = time.monotonic() - started
    assert elapsed < 10, f"FabricClient took {elapsed:.1f}s to give up (no-hang bound)"
    message = str(caught.value)
    assert "`perper-lab fabric start`" in message
    assert address in message


@pytest.mark.parametrize("address", ["localhost", "host:abc", ":10800", "host:", "127.0.0.1:10800,nohost",
                                     "http://127.0.0.1:10800", "127.0.0.1:10800:1", "my host:10800"])
def test_malformed_address_raises_fabric_error(address):
    with pytest.raises(FabricError, match="bad fabric address") as caught:
        FabricClient(address)
    assert not isinstance(caught.value, FabricUnavailable)
    assert "HOST:PORT" in str(caught.value)


@pytest.mark.parametrize("role", ["client", "discovery", "communication"])
def test_starting_on_a_port_in_use_raises_fabric_start_error_naming_the_port(tmp_path, role):
    offset = free_port_offset()
    local = LocalFabric(tmp_path / "run", nodes=1, port_offset=offset, exit_with_pid=os.getpid())
    layout = local.layout(0)
    port = {"client": layout.client_port, "discovery": layout.discovery_port,
            "communication": layout.communication_port}[role]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may be in TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        try:
            with pytest.raises(FabricStartError) as caught:
                local.start(timeout=60)
        finally:
            local.stop()

    message = str(caught.value)
    assert f"port {port}" in message
    assert "already in use" in message
    assert "--port-offset" in message
    assert not any(node.running for node in local.status())


def test_missing_java_raises_fabric_start_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(FabricStartError, match="Java was not found"):
        find_java()

    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))
    local = LocalFabric(tmp_path / "run", nodes=1, port_offset=free_port_offset())
    try:
        with pytest.raises(FabricStartError) as caught:
            local.start(timeout=30)
    finally:
        local.stop()
    assert "JAVA_HOME" in str(caught.value)
    assert not (tmp_path / "run" / "fabric.json").exists()


def perper_lab_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PERPER_FABRIC"}
    return subprocess.run([str(PERPER_LAB), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_fabric_start_status_stop_on_its_own_offset(tmp_path):
    run_dir = tmp_path / "cli-fabric"
    pid = None
    try:
        for _attempt in range(3):  # another process may take a probed-free port before the JVM binds it
            offset = free_port_offset()
            start = perper_lab_cli("fabric", "start", "--run-dir", str(run_dir), "--port-offset", str(offset))
            if start.returncode == 0 or "in use" not in start.stderr:
                break
        assert start.returncode == 0, start.stdout + start.stderr
        address = f"127.0.0.1:{10800 + offset}"
        assert f"fabric ready: 1 node(s) at {address}" in start.stdout

        status = perper_lab_cli("fabric", "status", "--run-dir", str(run_dir))
        assert status.returncode == 0, status.stdout + status.stderr
        match = re.search(r"node 0: running \(pid (\d+)\), thin client (\S+)", status.stdout)
        assert match, status.stdout
        pid = int(match.group(1))
        assert match.group(2) == address
        assert "fabric: 1 server node(s) in the cluster" in status.stdout
        assert pid_alive(pid)
        with FabricClient(address) as own:
            assert own.server_count() == 1

        stop = perper_lab_cli("fabric", "stop", "--run-dir", str(run_dir))
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "fabric stopped (1 node(s))" in stop.stdout
        assert not pid_alive(pid), f"fabric JVM {pid} is still running after `perper-lab fabric stop`"
        assert pid_gone(pid), f"process {pid} still exists after `perper-lab fabric stop`"

        after = perper_lab_cli("fabric", "status", "--run-dir", str(run_dir))
        assert after.returncode == 1
        assert "node 0: stopped" in after.stdout
        assert "fabric: stopped" in after.stdout

        again = perper_lab_cli("fabric", "stop", "--run-dir", str(run_dir))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing to stop" in again.stdout
    finally:
        if run_dir.joinpath("fabric.json").exists():
            LocalFabric.load(run_dir).stop()


def test_cli_fabric_status_without_a_started_fabric_says_so(tmp_path):
    status = perper_lab_cli("fabric", "status", "--run-dir", str(tmp_path / "never-started"))
    assert status.returncode == 1
    assert "no local fabric was started from" in status.stderr


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--port-offset", "70000", "outside 1..65535: choose an offset from"),
    ("--port-offset", "-100000", "outside 1..65535"),
    ("--region-mb", "1", "--region-mb must be at least 16"),
    ("--persistence", "/proc/no-such-dir", "cannot keep the fabric's data in --persistence /proc/no-such-dir"),
])
def test_cli_fabric_start_refuses_bad_options_in_one_line_before_any_jvm_starts(tmp_path, option, value, says):
    run_dir = tmp_path / "bad-options"
    start = perper_lab_cli("fabric", "start", "--run-dir", str(run_dir), "--port-offset", str(free_port_offset()),
                           option, value)
    assert start.returncode == 1
    assert says in start.stderr
    assert start.stderr.count("\n") == 1, start.stderr  # one line, no traceback
    assert not list(run_dir.glob("node-*.pid")), "a node was launched despite the bad option"


def test_the_already_running_hint_names_the_run_dir_it_applies_to(tmp_path):
    run_dir = tmp_path / "twice"
    local = start_on_free_ports(run_dir)
    try:
        again = perper_lab_cli("fabric", "start", "--run-dir", str(run_dir), "--port-offset", str(local.port_offset))
        assert again.returncode == 1
        assert f"stop it with `perper-lab fabric stop --run-dir {run_dir}` first" in again.stderr
    finally:
        local.stop()
