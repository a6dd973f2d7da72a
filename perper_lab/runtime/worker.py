"""The worker process: claims function instances through leases and runs them.

Instance i of a function with parallelism n runs the lanes (input partition -> output partition q)
with q mod n = i; :mod:`perper_lab.runtime.runners` runs them with exactly-once output.

Leases are compare-and-set entries in the fabric holding (worker, expiry); a worker renews its leases
every ``lease_ttl / 3`` seconds, and a dead worker's leases expire so that others take them over.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from typing import Any

from perper_lab.errors import FabricError, PerperError
from perper_lab.fabric.client import FabricClient
from perper_lab.runtime.execution import FunctionStopped
from perper_lab.runtime.registry import (
    LEASES_CACHE,
    STATE_CACHE,
    WORKERS_CACHE,
    FunctionSpec,
    done_key,
    done_mark,
    lease_key,
    list_functions,
    status_key,
)
from perper_lab.runtime.runners import SourceRunner, TransformRunner, make_runner
from perper_lab.streams.stream import MAX_POLL_INTERVAL

log = logging.getLogger("perper_lab.worker")

LEASE_TTL = 6.0


class Worker:
    """A worker process's engine. ``run()`` loops until ``stop`` is set; see the module docstring."""

    def __init__(self, fabric: str | FabricClient | None = None, *, slots: int | None = None,
                 lease_ttl: float = LEASE_TTL, worker_id: str | None = None) -> None:
        self.fabric = fabric if isinstance(fabric, FabricClient) else FabricClient(fabric)
        self.slots = slots
        self.lease_ttl = lease_ttl
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.held: dict[str, str] = {}  # lease key -> the lease value we hold
        self.runners: dict[str, TransformRunner | SourceRunner] = {}
        self._leases = self.fabric.cache(LEASES_CACHE)
        self._workers = self.fabric.cache(WORKERS_CACHE)
        self._state = self.fabric.cache(STATE_CACHE)
        self._next_refresh = 0.0

    # -- main loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        idle = 0.001
        log.info("worker %s serving fabric %s", self.id, self.fabric.address)
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= self._next_refresh:
                        self.refresh()
                    processed = self.step()
                except FabricError as exc:
                    log.warning("worker %s: %s; retrying in 1s", self.id, exc)
                    stop.wait(1.0)
                    continue
                if processed:
                    idle = 0.001
                else:
                    stop.wait(idle)
                    idle = min(idle * 2, MAX_POLL_INTERVAL)
        finally:
            self.shutdown()

    def step(self) -> int:
        processed = 0
        for key, runner in list(self.runners.items()):
            try:
                processed += runner.step()
            except FunctionStopped as stopped:
                why = ("the source failed" if runner.spec.kind == "source"  # a source has no error policy
                       else "stopped on an error (policy 'stop')")
                self._fail(runner.spec, f"{why}: {stopped}", stopped.record)
                self._drop(key)
                continue
            if runner.finished:
                # A finished instance gives its lease (and its slot) back and is not wanted again.
                self._state.put(done_key(key), done_mark(runner.spec))
                self._drop(key)
        return processed

    # -- leases ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Heartbeat, renew held leases, drop what is no longer ours, claim a fair share of the rest."""
        self._next_refresh = time.monotonic() + min(1.0, self.lease_ttl / 3)
        now = time.time()
        failed = {key.removeprefix("status/") for key, _ in self._state.items("status/")}
        specs = {s.output: s for s in list_functions(self.fabric) if s.state == "running" and s.output not in failed}
        done = dict(self._state.items("done/"))
        wanted = {}
        for s in specs.values():
            for i in range(s.parallelism):
                key = lease_key(s.output, i)
                if done.get(done_key(key)) != done_mark(s):
                    wanted[key] = (s, i)
        self._workers.put(self.id, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                               "heartbeat": now, "instances": sorted(self.held)}))
        live = sum(1 for _, text in self._workers.items() if json.loads(text)["heartbeat"] > now - self.lease_ttl)
        share = math.ceil(len(wanted) / max(live, 1))
        limit = min(share, self.slots) if self.slots else share

        for key in list(self.held):
            if key not in wanted or not self._renew(key, now):
                self._drop(key)
            elif key in self.runners and self.runners[key].spec != wanted[key][0]:
                self._drop(key)  # a new version or generation: rebuilt below from the committed offsets
        while len(self.held) > limit:
            self._drop(sorted(self.held)[-1])

        leases = dict(self._leases.items())
        candidates = [key for key in wanted if key not in self.held]
        random.shuffle(candidates)  # workers starting together should not all race for the same keys
        for key in candidates:
            if len(self.held) >= limit:
                break
            spec, index = wanted[key]
            if self._claim(key, leases.get(key), now, spec):
                try:
                    self.runners[key] = make_runner(self.fabric, spec, index)
                    log.info("worker %s: running %s (version %s)", self.id, key, spec.version)
                except FabricError:
                    self._drop(key)  # the fabric's trouble, not the function's: claim it again later
                    raise
                except PerperError as exc:
                    self._fail(spec, str(exc))
                    self._drop(key)
                except Exception as exc:  # the function's code could not be loaded in this process
                    self._fail(spec, f"cannot load the function in the worker: {type(exc).__name__}: {exc}")
                    self._drop(key)

    def _lease(self, now: float, spec: FunctionSpec) -> str:
        # The version tells observers (status, wait_deployed) which code this instance runs.
        return json.dumps({"worker": self.id, "expires": now + self.lease_ttl, "version": spec.version,
                           "generation": spec.generation})

    def _claim(self, key: str, current: str | None, now: float, spec: FunctionSpec) -> bool:
        mine = self._lease(now, spec)
        if current is None:
            taken = self._leases.put_if_absent(key, mine)
        elif json.loads(current)["expires"] < now:
            taken = self._leases.replace_if_equals(key, current, mine)
        else:
            return False
        if taken:
            self.held[key] = mine
        return taken

    def _renew(self, key: str, now: float) -> bool:
        mine = self._lease(now, self.runners[key].spec)
        if self._leases.replace_if_equals(key, self.held[key], mine):
            self.held[key] = mine
            return True
        log.warning("worker %s: lost lease %s", self.id, key)
        return False

    def _drop(self, key: str) -> None:
        runner = self.runners.pop(key, None)
        if runner is not None:
            runner.stop()
        held = self.held.pop(key, None)
        if held is not None:
            try:
                self._leases.remove_if_equals(key, held)
            except FabricError:
                pass  # it expires on its own

    def _fail(self, spec: FunctionSpec, reason: str, record: dict[str, Any] | None = None) -> None:
        log.error("worker %s: function %s failed: %s", self.id, spec.output, reason)
        detail = {"state": "failed", "reason": reason, "version": spec.version, "worker": self.id,
                  "traceback": (record or {}).get("traceback"), "item": repr((record or {}).get("item"))}
        self._state.put(status_key(spec.output), json.dumps(detail))

    def shutdown(self) -> None:
        """Give back every lease so that other workers take over at once, and sign off."""
        for key in list(self.held):
            self._drop(key)
        try:
            self._workers.remove_keys([self.id])
        except FabricError:
            pass
