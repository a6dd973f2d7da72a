"""The notebook's embedded fabric in a real Jupyter kernel: started by %load_ext, kept across a kernel
restart with its functions running, and stopped once the kernel has gone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager

from perper_lab.embedded import EmbeddedFabric, _alive, embedded_root


def run(client, code: str, timeout: float = 180) -> str:
    """Execute ``code`` in the kernel; return its stdout and text results; fail on an error."""
    msg_id = client.execute(code)
    output = []
    while True:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            output.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            output.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            pytest.fail(f"{content['ename']}: {content['evalue']}")
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(output)


def embedded_directory(client) -> Path:
    return Path(run(client, "from perper_lab.notebook.extension import current_session\n"
                            "print(current_session().embedded.directory)").strip())


@pytest.fixture
def kernel(monkeypatch, request):
    """A real Jupyter kernel; its embedded fabric lingers ``request.param`` seconds (default 30) after it."""
    monkeypatch.delenv("PERPER_FABRIC", raising=False)
    monkeypatch.setenv("PERPER_EMBEDDED_GRACE", str(getattr(request, "param", 30)))
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    try:
        yield manager, client
    finally:
        client.stop_channels()
        if manager.is_alive():
            manager.shutdown_kernel(now=True)
        key = Path(manager.connection_file).stem.removeprefix("kernel-")  # what the kernel keys it by
        EmbeddedFabric(embedded_root() / key).stop()


def test_a_restarted_kernel_reattaches_and_its_function_kept_running(kernel):
    manager, client = kernel
    started = run(client, "%load_ext perper_lab")
    assert "started an embedded fabric" in started
    run(client, "import perper_lab\n"
                "perper_lab.from_iterable(range(30_000), 'ticks', rate=3_000)\n"
                "perper_lab.register(lambda x: x + 1, 'ticks_plus', 'ticks')\n")
    embedded = EmbeddedFabric(embedded_directory(client))
    supervisor = embedded.ready["pid"]

    manager.restart_kernel(now=True)  # the replay thread dies with the kernel; the function does not
    client.wait_for_ready(timeout=60)
    again = run(client, "%load_ext perper_lab")

    assert "re-attached to the embedded fabric" in again
    assert embedded.ready["pid"] == supervisor
    report = run(client, "import perper_lab\n"
                         "out = perper_lab.stream('ticks_plus')\n"
                         "ticks = perper_lab.stream('ticks')\n"
                         "import time\n"
                         "deadline = time.monotonic() + 60\n"
                         "while out.count() < ticks.count() and time.monotonic() < deadline:\n"
                         "    time.sleep(0.1)\n"
                         "print(ticks.count(), out.count(), list(out) == [x + 1 for x in ticks])\n")
    written, processed, equal = report.split()
    assert int(written) > 0 and int(processed) == int(written) and equal == "True"


@pytest.mark.parametrize("kernel", [3], indirect=True)
def test_the_embedded_fabric_stops_after_its_kernel_exits(kernel):
    manager, client = kernel
    run(client, "%load_ext perper_lab")
    embedded = EmbeddedFabric(embedded_directory(client))
    supervisor = embedded.ready["pid"]
    workers = embedded.pids
    assert workers and all(_alive(pid) for pid in workers)

    manager.shutdown_kernel(now=True)
    deadline = time.monotonic() + 60  # 3 s of grace, then the fabric and the workers stop
    while _alive(supervisor) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(supervisor)
    assert not any(_alive(pid) for pid in workers)
