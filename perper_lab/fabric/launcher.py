"""Start, inspect and stop local fabric nodes (one JVM per Ignite server node).

A local fabric lives in a run directory: ``fabric.json`` (its layout), ``node-I.pid`` and ``node-I.log``
per node, and the nodes' Ignite work directories. ``perper-lab fabric start|status|stop`` and the
notebook's embedded fabric both use :class:`LocalFabric`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from perper_lab.errors import FabricStartError, FabricUnavailable
from perper_lab.fabric.client import FabricClient

READY_MARKER = "PERPER-FABRIC-READY"
# The cap of a node's data region. Memory is taken as streams grow (from 64 MB), so a high cap costs
# nothing until used; an in-memory node that reaches it stops (Ignite's out-of-memory is fatal).
DEFAULT_REGION_MB = 1024
MIN_REGION_MB = 16  # Ignite refuses a data region of 10 MB or less
JVM_OPTIONS = Path(__file__).with_name("jvm.options")
CLIENT_PORT, DISCOVERY_PORT, COMMUNICATION_PORT = 10800, 47500, 47100


def default_run_dir() -> Path:
    return Path(os.environ.get("PERPER_HOME", Path.home() / ".perper_lab")) / "fabric"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def fabric_jar() -> Path:
    return Path(os.environ.get("PERPER_FABRIC_JAR", repo_root() / "fabric" / "target" / "perper-fabric.jar"))


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    java = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not java:
        raise FabricStartError(
            "Java was not found: the fabric runs on Java 17. Install a JDK "
            "(e.g. `apt-get install openjdk-17-jdk-headless`) or set JAVA_HOME."
        )
    return java


def ensure_jar(log_dir: Path) -> Path:
    """Build the fabric jar with Maven unless it is already there."""
    jar = fabric_jar()
    if jar.exists():
        return jar
    pom = repo_root() / "fabric" / "pom.xml"
    mvn = shutil.which("mvn")
    if not pom.exists() or not mvn:
        raise FabricStartError(
            f"the fabric jar {jar} is missing and cannot be built here "
            f"({'Maven (mvn) is not installed' if pom.exists() else f'no Maven project at {pom}'}); "
            "set PERPER_FABRIC_JAR to a built jar or install Maven"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "build.log"
    with log.open("w") as out:
        result = subprocess.run([mvn, "-B", "-q", "-f", str(pom), "package", "-DskipTests"],
                                stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0 or not jar.exists():
        raise FabricStartError(f"building the fabric jar with Maven failed; see {log}")
    return jar


@dataclass
class NodeLayout:
    index: int
    client_port: int
    discovery_port: int
    communication_port: int


@dataclass
class NodeStatus:
    index: int
    pid: int | None
    running: bool
    client_address: str


class LocalFabric:
    """Local Ignite server nodes started as subprocesses, described by a run directory.

    >>> fabric = LocalFabric(nodes=1).start()   # doctest: +SKIP
    >>> fabric.address                          # doctest: +SKIP
    '127.0.0.1:10800'
    >>> fabric.stop()                           # doctest: +SKIP
    """

    def __init__(self, run_dir: Path | str | None = None, *, nodes: int = 1, port_offset: int = 0,
                 persistence: Path | str | None = None, host: str = "127.0.0.1", region_mb: int = DEFAULT_REGION_MB,
                 heap_mb: int = 512, exit_with_pid: int | None = None) -> None:
        if nodes < 1:
            raise FabricStartError(f"a fabric needs at least one node, not {nodes}")
        lowest, highest = CLIENT_PORT + port_offset, DISCOVERY_PORT + port_offset + nodes - 1
        if lowest < 1 or highest > 65535:
            raise FabricStartError(
                f"--port-offset {port_offset} puts the ports of {nodes} node(s) at {lowest}..{highest}, outside "
                f"1..65535: choose an offset from {1 - CLIENT_PORT} to {65535 - DISCOVERY_PORT - nodes + 1}")
        if region_mb < MIN_REGION_MB:
            raise FabricStartError(f"--region-mb must be at least {MIN_REGION_MB} (Ignite's smallest data region), "
                                   f"not {region_mb}")
        self.run_dir = Path(run_dir) if run_dir else default_run_dir()
        self.nodes = nodes
        self.port_offset = port_offset
        self.persistence = Path(persistence).resolve() if persistence else None
        self.host = host
        self.region_mb = region_mb
        self.heap_mb = heap_mb
        self.exit_with_pid = exit_with_pid
        self._log_starts: dict[int, int] = {}

    # -- layout ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, run_dir: Path | str | None = None) -> LocalFabric:
        """The fabric described by ``run_dir/fabric.json`` (written by :meth:`start`)."""
        run_dir = Path(run_dir) if run_dir else default_run_dir()
        try:
            spec = json.loads((run_dir / "fabric.json").read_text())
        except FileNotFoundError:
            raise FabricUnavailable(f"no local fabric was started from {run_dir}") from None
        return cls(run_dir, nodes=spec["nodes"], port_offset=spec["port_offset"],
                   persistence=spec["persistence"], host=spec["host"], region_mb=spec["region_mb"],
                   heap_mb=spec["heap_mb"])

    def layout(self, index: int) -> NodeLayout:
        base = self.port_offset + index
        return NodeLayout(index, CLIENT_PORT + base, DISCOVERY_PORT + base, COMMUNICATION_PORT + base)

    @property
    def address(self) -> str:
        return ",".join(f"{self.host}:{self.layout(i).client_port}" for i in range(self.nodes))

    def _pid_file(self, index: int) -> Path:
        return self.run_dir / f"node-{index}.pid"

    def log_file(self, index: int) -> Path:
        return self.run_dir / f"node-{index}.log"

    def _work_dir(self, index: int) -> Path:
        return (self.persistence or self.run_dir / "work") / f"node-{index}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> LocalFabric:
        """Start every node, wait until each answers a thin-client handshake, and return self."""
        java = find_java()
        jar = ensure_jar(self.run_dir)
        running = [s.index for s in self.status() if s.running]
        if running:
            raise FabricStartError(
                f"a fabric from {self.run_dir} is already running (nodes {running}); "
                f"stop it with `perper-lab fabric stop{self._run_dir_option()}` first"
            )
        for index in range(self.nodes):
            self._check_ports_free(index)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.persistence:
            try:
                self.persistence.mkdir(parents=True, exist_ok=True)
                probe = self.persistence / ".perper-write-check"
                probe.touch()
                probe.unlink()
            except OSError as exc:
                raise FabricStartError(f"cannot keep the fabric's data in --persistence {self.persistence}: "
                                       f"{exc.strerror or exc}; choose a writable folder") from None
        spec = {"nodes": self.nodes, "port_offset": self.port_offset, "host": self.host,
                "persistence": str(self.persistence) if self.persistence else None,
                "region_mb": self.region_mb, "heap_mb": self.heap_mb,
                "layout": [asdict(self.layout(i)) for i in range(self.nodes)]}
        (self.run_dir / "fabric.json").write_text(json.dumps(spec, indent=2))
        deadline = time.monotonic() + timeout
        try:
            # One node at a time: nodes joining together on a busy machine can fail Ignite's partition
            # exchange ("Failed to find completed exchange future") and exit.
            for index in range(self.nodes):
                self._wait_ready(index, self._launch(java, jar, index), deadline, timeout)
            self._wait_handshake(deadline, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, index: int, timeout: float = 120.0) -> None:
        """(Re)start one node of this fabric, e.g. after it was killed."""
        self._check_ports_free(index)
        process = self._launch(find_java(), ensure_jar(self.run_dir), index)
        self._wait_ready(index, process, time.monotonic() + timeout, timeout)

    def _launch(self, java: str, jar: Path, index: int) -> subprocess.Popen:
        node = self.layout(index)
        first, last = self.layout(0).discovery_port, self.layout(self.nodes - 1).discovery_port
        args = [java, f"@{JVM_OPTIONS}", f"-Xms{min(self.heap_mb, 256)}m", f"-Xmx{self.heap_mb}m",
                "-jar", str(jar), "--index", str(index), "--host", self.host,
                "--client-port", str(node.client_port), "--discovery-port", str(node.discovery_port),
                "--communication-port", str(node.communication_port),
                "--discovery-addresses", f"{self.host}:{first}..{last}",
                "--work-dir", str(self._work_dir(index)), "--region-mb", str(self.region_mb),
                "--cluster-size", str(self.nodes)]
        if self.persistence:
            args.append("--persistence")
        if self.exit_with_pid:
            args += ["--exit-with-pid", str(self.exit_with_pid)]
        log_path = self.log_file(index)
        # The log is appended to across runs: only what this JVM writes counts as its readiness.
        self._log_starts[index] = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            # A session of its own: Ctrl-C in a terminal or notebook must not kill the fabric midway.
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self._pid_file(index).write_text(str(process.pid))
        return process

    def _run_dir_option(self) -> str:
        """`` --run-dir DIR`` when this fabric is not the default one, for the commands we suggest."""
        return "" if self.run_dir.resolve() == default_run_dir().resolve() else f" --run-dir {self.run_dir}"

    def _check_ports_free(self, index: int) -> None:
        node = self.layout(index)
        for port, role in ((node.client_port, "thin-client"), (node.discovery_port, "discovery"),
                           (node.communication_port, "communication")):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # Like the JVM's server sockets: TIME_WAIT leftovers of a stopped node do not block a
                # bind, a listening socket still does (on Linux and macOS).
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, port))
                except OSError:
                    raise FabricStartError(
                        f"port {port} ({role} port of node {index}) is already in use on {self.host}: "
                        "another fabric or program holds it. Stop it (`perper-lab fabric stop`) or "
                        "choose other ports with --port-offset N"
                    ) from None

    def _wait_ready(self, index: int, process: subprocess.Popen, deadline: float, timeout: float) -> None:
        log = self.log_file(index)
        start = self._log_starts.get(index, 0)
        while True:
            with log.open("rb") as text:
                text.seek(start)
                if READY_MARKER.encode() in text.read():
                    return
            if process.poll() is not None:
                raise FabricStartError(
                    f"fabric node {index} exited with code {process.returncode} while starting; "
                    f"see {log}:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise FabricStartError(f"fabric node {index} was not ready within {timeout:g}s; see {log}")
            time.sleep(0.2)

    def _wait_handshake(self, deadline: float, timeout: float) -> None:
        while True:
            try:
                with FabricClient(self.address, timeout=5.0) as client:
                    if client.server_count() >= self.nodes:
                        return
            except FabricUnavailable:
                pass
            if time.monotonic() > deadline:
                raise FabricStartError(
                    f"the fabric at {self.address} did not accept thin-client connections from all "
                    f"{self.nodes} node(s) within {timeout:g}s; see the logs in {self.run_dir}"
                )
            time.sleep(0.3)

    def status(self) -> list[NodeStatus]:
        statuses = []
        for index in range(self.nodes):
            pid = _read_pid(self._pid_file(index))
            statuses.append(NodeStatus(index, pid, pid is not None and _is_fabric_process(pid),
                                       f"{self.host}:{self.layout(index).client_port}"))
        return statuses

    def kill_node(self, index: int) -> None:
        """Crash one node with SIGKILL (for fault tests)."""
        pid = _read_pid(self._pid_file(index))
        if pid and _is_fabric_process(pid):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout``); leaves no JVM behind."""
        pids = [s.pid for s in self.status() if s.running and s.pid]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in pids:
            if not _wait_gone(pid, max(0.0, deadline - time.monotonic())):
                _signal(pid, signal.SIGKILL)
                _wait_gone(pid, 10.0)
        for index in range(self.nodes):
            self._pid_file(index).unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_fabric_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie (state Z) has exited; it is only waiting for its parent to reap it.
    return b"perper-fabric" in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_fabric_process(pid):
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def free_port_offset(host: str = "127.0.0.1", nodes: int = 1, step: int = 10, limit: int = 50) -> int:
    """The first port offset (0, 10, 20, ...) whose client, discovery and communication ports are free."""
    for offset in range(0, step * limit, step):
        probe = LocalFabric(nodes=nodes, port_offset=offset, host=host)
        try:
            for index in range(nodes):
                probe._check_ports_free(index)
        except FabricStartError:
            continue
        return offset
    raise FabricStartError(f"no free fabric ports on {host} in the first {limit} offsets")


def start_on_free_ports(run_dir: Path | str, *, nodes: int = 1, attempts: int = 3, timeout: float = 120.0,
                        **options: object) -> LocalFabric:
    """Start a fabric on the first free port offset, trying another offset if a port was taken meanwhile.

    Probing ports and binding them are two steps: another fabric (a test session, another kernel's
    embedded fabric) may take a port in between, and the JVM then fails with "Address already in use".
    """
    for attempt in range(attempts):
        fabric = LocalFabric(run_dir, nodes=nodes, port_offset=free_port_offset(nodes=nodes), **options)
        try:
            return fabric.start(timeout=timeout)
        except FabricStartError as exc:
            if "in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
