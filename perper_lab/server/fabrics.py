"""The fabrics a Jupyter server can see, and what each one holds, as plain JSON-ready dicts.

Three ways a fabric becomes known (all read from the server's own environment and files):

- ``PERPER_FABRIC`` (``host:port[,host:port...]``), as a notebook with that variable would connect;
- each live embedded fabric: ``$PERPER_HOME/embedded/KERNEL-ID/ready.json`` whose supervisor pid is
  alive (one per notebook kernel that has no ``PERPER_FABRIC``);
- the local fabric of ``perper-lab fabric start`` (``$PERPER_HOME/fabric``), if one of its nodes runs.

Fabrics known in several ways (the same address) are listed once, with every way they are known.
Asking a fabric what it holds is blocking pyignite I/O: :class:`FabricMonitor` does it on threads of
its own, never on the caller's event loop, and gives up waiting after ``answer_timeout`` seconds, so
a fabric that does not answer becomes an entry with an ``error`` instead of a hang (or, if it answered
a previous query late, that answer with its age in ``stale_s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from perper_lab import api
from perper_lab.embedded import EmbeddedFabric, embedded_root
from perper_lab.errors import FabricUnavailable, PerperError
from perper_lab.fabric.client import FabricClient
from perper_lab.fabric.launcher import LocalFabric, default_run_dir

CLIENT_TIMEOUT = 2.5  # seconds: each pyignite request and handshake
ANSWER_TIMEOUT = 4.0  # seconds: the longest a request waits for one fabric's status
STALE_LIMIT = 30.0  # seconds: a slow fabric's last answer is shown (marked stale) for this long


def known_fabrics(kernel_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """``[{"address", "sources": [{"kind", "label", ...}]}]``, one entry per distinct address.

    ``kernel_ids``: the kernels of this server, to tell which embedded fabrics belong to them.
    """
    found: list[tuple[str, dict[str, Any]]] = []
    address = os.environ.get("PERPER_FABRIC", "").strip()
    if address:
        found.append((address, {"kind": "env", "label": "PERPER_FABRIC"}))
    for directory in sorted(embedded_root().glob("*/")):
        ready = EmbeddedFabric(directory).ready  # None unless ready.json names a live supervisor
        if ready:
            kernel = directory.name
            found.append((ready["address"], {
                "kind": "embedded", "label": f"embedded fabric of kernel {kernel[:8]}", "kernel": kernel,
                "directory": str(directory), "supervisor_pid": ready["pid"],
                "kernel_of_this_server": kernel in (kernel_ids or set())}))
    local = _local_fabric()
    if local:
        found.append(local)
    merged: dict[str, dict[str, Any]] = {}
    for fabric_address, source in found:
        merged.setdefault(fabric_address, {"address": fabric_address, "sources": []})["sources"].append(source)
    return list(merged.values())


def _local_fabric() -> tuple[str, dict[str, Any]] | None:
    run_dir = default_run_dir()
    try:
        local = LocalFabric.load(run_dir)
        running = sum(node.running for node in local.status())
    except FabricUnavailable:  # no fabric.json: never started from here
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged fabric.json
        return f"(unreadable {run_dir / 'fabric.json'})", {
            "kind": "local", "label": "perper-lab fabric start", "run_dir": str(run_dir),
            "error": f"cannot read {run_dir / 'fabric.json'}: {exc}"}
    if not running:
        return None
    return local.address, {"kind": "local", "label": "perper-lab fabric start", "run_dir": str(run_dir),
                           "nodes": local.nodes, "running_nodes": running}


def fabric_status(address: str, timeout: float = CLIENT_TIMEOUT) -> dict[str, list[dict[str, Any]]]:
    """Streams, functions and workers of the fabric at ``address`` (blocking; raises PerperError)."""
    with FabricClient(address, timeout=timeout) as client:
        tables = api.status(client)
    streams = [{"name": s["stream"], "partitions": s["partitions"], "items": s["items"], "closed": s["closed"],
                "producer": s["producer"]} for s in _records(tables["streams"])]
    functions = [{"output": f["output"], "function": f["function"], "inputs": _split(f["input"]),
                  "kind": f["kind"], "version": f["version"], "parallelism": f["parallelism"], "state": f["state"],
                  "reason": f["reason"], "workers": _split(f["workers"]), "lag": f["lag"], "errors": f["errors"]}
                 for f in _records(tables["functions"])]
    workers = [{**w, "instances": _split(w["instances"])} for w in _records(tables["workers"])]
    return {"streams": streams, "functions": functions, "workers": workers}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))  # plain ints, floats, bools, strings (no numpy)


def _split(joined: str) -> list[str]:
    return [part for part in (joined or "").split(", ") if part]


class FabricMonitor:
    """Answers "which fabrics, and what is in them" for a server, without blocking its event loop.

    At most one status query per fabric address runs at a time: concurrent requests (several browser
    tabs polling) share it, and a query that outlives one request's wait is picked up by the next. The
    last answer of each fabric is kept, so that a fabric slower than ``answer_timeout`` is still shown
    (with ``stale_s``, the age of that answer) rather than as an error.
    """

    def __init__(self, *, client_timeout: float = CLIENT_TIMEOUT, answer_timeout: float = ANSWER_TIMEOUT,
                 max_threads: int = 4) -> None:
        self.client_timeout = client_timeout
        self.answer_timeout = answer_timeout
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="perper-lab-status")
        self._running: dict[str, asyncio.Future] = {}
        self._last: dict[str, tuple[float, dict[str, Any]]] = {}  # address -> (monotonic time, answer)

    async def snapshot(self, kernel_ids: set[str] | None = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            fabrics = await loop.run_in_executor(self._executor, known_fabrics, kernel_ids)
        except Exception as exc:  # reading the run directories must never fail the request
            return {"fabrics": [], "error": f"cannot list the fabrics: {type(exc).__name__}: {exc}",
                    "checked_at": time.time()}
        await asyncio.gather(*(self._fill(fabric) for fabric in fabrics))
        return {"fabrics": fabrics, "error": None, "checked_at": time.time()}

    async def _fill(self, fabric: dict[str, Any]) -> None:
        fabric.update(error=None, streams=[], functions=[], workers=[])
        failed = [source["error"] for source in fabric["sources"] if "error" in source]
        if failed:
            fabric["error"] = failed[0]
            return
        started = time.monotonic()
        try:
            fabric.update(await asyncio.wait_for(asyncio.shield(self._query(fabric["address"])),
                                                 self.answer_timeout))
        except TimeoutError:
            answered, last = self._last.get(fabric["address"], (0.0, None))
            if last is not None and time.monotonic() - answered < STALE_LIMIT:
                fabric.update(last, stale_s=round(time.monotonic() - answered, 1))
            else:
                fabric["error"] = (f"no answer from the fabric at {fabric['address']} within "
                                   f"{self.answer_timeout:g}s (it may be overloaded or stuck)")
        except PerperError as exc:
            fabric["error"] = str(exc)
        except Exception as exc:  # anything else a broken fabric may cause: report it, never a 500
            fabric["error"] = f"{type(exc).__name__}: {exc}"
        fabric["answered_in_s"] = round(time.monotonic() - started, 3)

    def _query(self, address: str) -> asyncio.Future:
        running = self._running.get(address)
        if running is None:
            running = asyncio.wrap_future(self._executor.submit(fabric_status, address, self.client_timeout))
            self._running[address] = running

            def forget(future: asyncio.Future) -> None:
                if self._running.get(address) is future:
                    del self._running[address]
                if future.cancelled() or future.exception() is not None:  # retrieved, even if nobody waited
                    self._last.pop(address, None)  # the fabric failed: never show an old answer for it
                else:
                    self._last[address] = (time.monotonic(), future.result())

            running.add_done_callback(forget)
        return running

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
