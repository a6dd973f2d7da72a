"""A real Jupyter server (``jupyter server`` or JupyterLab) started by a test, and checks that it leaves
nothing behind. Used by ``tests/test_server.py`` and the browser tests (``tests/browser/conftest.py``).

The server runs on 127.0.0.1 (a free port, a random token) with config, runtime, settings and
workspace directories of the test, and ``PERPER_HOME`` in a directory of the test, so that it sees
only the fabrics the test gives it (never a developer's embedded fabrics). Every process it starts
carries a marker in its environment; :func:`shut_down` stops its kernels and the server and fails if
one of these processes, or a fabric JVM under the test's ``PERPER_HOME``, is still running.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

MARKER = "PERPER_LAB_JUPYTER_TEST"
SERVER_START_S = 60  # the server answering /api/status
LEFTOVERS_S = 30  # kernels, fabric JVMs and workers gone after the shutdown


@dataclass
class JupyterProcess:
    """A running Jupyter server of a test."""

    url: str
    token: str
    root: Path
    home: Path  # its PERPER_HOME
    marker: str
    process: subprocess.Popen
    log: Path

    def request(self, method: str, path: str, timeout: float = 10.0, *, token: bool = True) -> tuple[int, object]:
        """(HTTP status, JSON body or None); never raises for an HTTP error status."""
        headers = {"Authorization": f"token {self.token}"} if token else {}
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body) if body else None
        except json.JSONDecodeError:
            return status, body.decode(errors="replace")

    def api(self, method: str, path: str, timeout: float = 10.0) -> object:
        status, body = self.request(method, path, timeout)
        assert 200 <= status < 300, f"{method} {path} answered {status}: {body}\n{self.log_tail()}"
        return body

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def start_jupyter(workdir: Path, log: Path, *, lab: bool = True, env: dict[str, str | None] | None = None,
                  files: Iterable[Path] = ()) -> JupyterProcess:
    """Start JupyterLab (or a plain ``jupyter server``) with its directories under ``workdir``.

    ``env`` overrides the environment (``None`` removes a variable); ``PERPER_FABRIC`` is removed unless
    given; ``files`` are copied into the server's root directory.
    """
    root, home = workdir / "root", workdir / "perper-home"
    settings = workdir / "lab-settings" / "@jupyterlab" / "apputils-extension"
    for folder in (root, home, settings, workdir / "workspaces", workdir / "runtime", workdir / "config"):
        folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy(file, root / file.name)
    # No "get notified about Jupyter news?" toast over screenshots, no update check (offline).
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    log.parent.mkdir(parents=True, exist_ok=True)

    token = secrets.token_hex(24)
    marker = uuid.uuid4().hex
    environment = {key: value for key, value in os.environ.items() if key != "PERPER_FABRIC"}
    environment.update({
        "JUPYTER_TOKEN": token,
        "BOKEH_RESOURCES": "inline",  # no CDN here: BokehJS comes inline
        "PERPER_HOME": str(home),  # embedded fabrics (so their JVMs' --work-dir) and the local fabric, in here
        "PERPER_EMBEDDED_GRACE": "2",  # an embedded fabric stops 2 s after its kernel is gone (default 20)
        "JUPYTER_CONFIG_DIR": str(workdir / "config"),
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(workdir / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "workspaces"),
        MARKER: marker,
    })
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab" if lab else "jupyter_server", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--ServerApp.root_dir={root}"],
            env=environment, cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    server = JupyterProcess(f"http://127.0.0.1:{port}", token, root, home, marker, process, log)

    def answers() -> bool:
        assert process.poll() is None, f"the Jupyter server exited ({process.returncode}):\n{server.log_tail()}"
        try:
            return "started" in server.request("GET", "/api/status", timeout=2.0)[1]
        except OSError:
            return False

    try:
        assert wait_until(answers, SERVER_START_S, 0.25), (
            f"the Jupyter server did not answer /api/status within {SERVER_START_S}s:\n{server.log_tail()}")
    except BaseException:
        shut_down(server)
        raise
    return server


def shut_down(server: JupyterProcess) -> None:
    """Kernels first (each stops its embedded fabric and workers), then the server; then check for leftovers."""
    if server.process.poll() is None:
        try:
            for kernel in server.api("GET", "/api/kernels"):
                server.request("DELETE", f"/api/kernels/{kernel['id']}", timeout=60.0)
            server.request("POST", "/api/shutdown")
        except (OSError, AssertionError):
            pass
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(10)

    def leftovers() -> dict[int, str]:
        return {pid: "fabric JVM" for pid in fabric_jvms(server.home)} | marked_processes(server.marker)

    gone = wait_until(lambda: not leftovers(), LEFTOVERS_S)
    left = leftovers()
    for pid in left:  # leave the machine clean even when failing
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert gone, f"processes of this test still running {LEFTOVERS_S}s after the shutdown: {left}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fabric_jvms(home: Path) -> set[int]:
    """PIDs of perper-fabric JVMs whose work dir lies under ``home`` (so: started for this test)."""
    result = subprocess.run(["pgrep", "-f", f"perper-fabric.*--work-dir {home}/"], capture_output=True, text=True)
    return {int(pid) for pid in result.stdout.split()}


def marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment carries ``MARKER=marker``: the server and all it started."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
