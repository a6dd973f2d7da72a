"""Fault injection: kill -9 of workers and Ignite nodes, whole-fabric restarts, error policies.

Every test runs against real Ignite JVMs (a fabric of its own, on free ports, in a run directory of
its own) and real worker processes (``WorkerPool``), and stops all of them in its teardown: the JVMs
get ``exit_with_pid`` and the workers exit with this process even if pytest itself is killed.

The timing bounds asserted here are bounds the product promises (a dead worker's instances are taken
over once its 6 s leases expire; a new worker gets its fair share within a refresh or two; a call on a
stopped fabric fails instead of hanging), never speed claims. Figures worth keeping (takeover seconds,
kills survived, items checked, elapsed times) are printed and appended to
``test-artifacts/faults/results.jsonl``.

The tests at the end of the file pin engine bugs this suite found (and that were then fixed): a
restart in the same run directory, ports in TIME_WAIT, the stop policy's dead letter, a failed flush,
a fabric error while an instance starts, a finished function's slot. Knobs: ``PERPER_CHAOS_SEED`` replays a
chaos run's kill schedule (the seed is in its record), ``PERPER_FAULT_KILL_NODE=1`` crashes the
non-coordinator node instead of node 0.

Functions are defined inside the tests on purpose: cloudpickle ships nested functions by value, whereas
a module-level function of this module would be pickled by reference to a module the workers cannot
import.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import perper_lab
from perper_lab.errors import FabricError, FabricStartError, FabricUnavailable, FunctionError
from perper_lab.fabric.client import FabricClient
from perper_lab.fabric.launcher import LocalFabric, free_port_offset, start_on_free_ports
from perper_lab.runtime import get_function, register_function
from perper_lab.runtime.pool import WorkerPool
from perper_lab.runtime.registry import LEASES_CACHE, STATE_CACHE, WORKERS_CACHE, failure, offset_key
from perper_lab.streams import Stream, create_stream, open_stream

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "faults"
TAKEOVER_BOUND = 10.0  # seconds: leases expire after 6 s, workers refresh every second


# -- recording ---------------------------------------------------------------------------------------


def record(test: str, **figures: Any) -> None:
    """Print the figures of a run and append them to test-artifacts/faults/results.jsonl."""
    entry = {"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    print(f"\n[faults] {json.dumps(entry)}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / "results.jsonl").open("a") as out:
        out.write(json.dumps(entry) + "\n")


# -- waiting -----------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


# -- fabrics and workers -----------------------------------------------------------------------------


class Lab:
    """The fabrics and worker pools of one test; ``close()`` stops every one of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fabrics: list[LocalFabric] = []
        self.pools: list[WorkerPool] = []
        self.clients: list[FabricClient] = []

    def fabric(self, name: str = "fabric", *, nodes: int = 1, persistence: Path | None = None) -> LocalFabric:
        fabric = start_on_free_ports(self.root / name, nodes=nodes, persistence=persistence,
                                     exit_with_pid=os.getpid())
        self.fabrics.append(fabric)
        return fabric

    def restart(self, fabric: LocalFabric) -> LocalFabric:
        """Start a stopped fabric again: same run directory, ports and persistence directory."""
        again = LocalFabric(fabric.run_dir, nodes=fabric.nodes, port_offset=fabric.port_offset,
                                  persistence=fabric.persistence, exit_with_pid=os.getpid())
        self.fabrics.append(again)
        return again.start()

    def client(self, fabric: LocalFabric, timeout: float = 10.0) -> FabricClient:
        client = FabricClient(fabric.address, timeout=timeout)
        self.clients.append(client)
        return client

    def workers(self, fabric: LocalFabric, count: int, name: str = "workers") -> WorkerPool:
        pool = WorkerPool(fabric.address, log_dir=self.root / name)
        self.pools.append(pool)
        pool.scale(count)
        return pool

    def worker_logs(self, chars: int = 2500) -> str:
        parts = []
        for pool in self.pools:
            for log in sorted(pool.log_dir.glob("*.log")):
                parts.append(f"--- {log}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def close(self) -> None:
        errors = []
        for pool in self.pools:
            try:
                pool.stop()
            except Exception as exc:  # keep stopping the rest
                errors.append(exc)
        for client in self.clients:
            client.close()
        for fabric in self.fabrics:
            fabric.stop()
        assert not errors, errors
        for pool in self.pools:
            assert not pool.pids, f"workers still running: {pool.pids}"
        for fabric in self.fabrics:
            assert not any(node.running for node in fabric.status()), f"a fabric node still runs in {fabric.run_dir}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


# -- leases and workers as the fabric sees them --------------------------------------------------------


def live_workers(client: FabricClient) -> dict[str, int]:
    """Worker id -> pid of the workers whose heartbeat is fresh."""
    now = time.time()
    found = {}
    for worker_id, text in client.cache(WORKERS_CACHE).items():
        entry = json.loads(text)
        if entry["heartbeat"] > now - 6.0:
            found[worker_id] = entry["pid"]
    return found


def holders(client: FabricClient, output: str, parallelism: int) -> dict[int, str | None]:
    """Instance -> id of the worker holding its unexpired lease (None if nobody does)."""
    now = time.time()
    leases = dict(client.cache(LEASES_CACHE).items(f"{output}#"))
    held: dict[int, str | None] = {}
    for instance in range(parallelism):
        text = leases.get(f"{output}#{instance}")
        lease = json.loads(text) if text else None
        held[instance] = lease["worker"] if lease and lease["expires"] > now else None
    return held


def worker_id_of(client: FabricClient, pid: int, timeout: float = 15.0) -> str:
    def find() -> str | None:
        return next((wid for wid, wpid in live_workers(client).items() if wpid == pid), None)

    return wait_until(find, timeout, f"worker pid {pid} to heartbeat")


# -- streams -----------------------------------------------------------------------------------------


def partitions_of(stream: Stream) -> list[list[Any]]:
    """Every item of ``stream`` written so far, partition by partition."""
    return [[item for _, batch in stream.read_batches(p) for item in batch] for p in range(stream.partitions)]


def wait_output(lab: Lab, client: FabricClient, output: str, timeout: float) -> Stream:
    """The output stream once it is closed; on a timeout, say why (status, leases, worker logs)."""
    stream = open_stream(client, output)
    try:
        stream.wait_closed(timeout)
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}\nfunction status: {failure(client, output)}\n"
            f"leases: {dict(client.cache(LEASES_CACHE).items())}\n"
            f"workers: {live_workers(client)}\n{lab.worker_logs()}"
        ) from None
    return stream


class PacedWriter(threading.Thread):
    """Writes ``items`` into an existing stream in chunks, pausing between chunks, then closes it.

    It has a fabric connection of its own. ``acknowledged`` counts the items whose flush returned;
    ``error`` holds what stopped it, if anything.
    """

    def __init__(self, address: str, name: str, items: Iterable[Any], *, chunk: int, pause: float) -> None:
        super().__init__(name=f"paced-writer-{name}", daemon=True)
        self.address = address
        self.stream_name = name
        self.items = list(items)
        self.chunk = chunk
        self.pause = pause
        self.acknowledged = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with FabricClient(self.address, timeout=10.0) as own:
                writer = open_stream(own, self.stream_name).writer(batch_size=10**9, linger=3600.0)
                for start in range(0, len(self.items), self.chunk):
                    if self.halt.is_set():
                        return
                    writer.extend(self.items[start:start + self.chunk])
                    writer.flush()
                    self.acknowledged = min(start + self.chunk, len(self.items))
                    self.halt.wait(self.pause)
                writer.close()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"the writer of {self.stream_name!r} did not finish within {timeout:g}s"
        assert self.error is None, f"the writer of {self.stream_name!r} failed: {self.error!r}"

    def stop(self) -> None:
        """Stop early (the test failed): no more writes into a fabric about to be stopped."""
        self.halt.set()
        self.join(30)


def expected_by_partition(source: list[list[Any]], fn: Callable[[Any], Any]) -> list[list[Any]]:
    return [[y for y in (fn(x) for x in part) if y is not None] for part in source]


# ======================================================================================================
# 1. worker takeover
# ======================================================================================================


def test_a_killed_workers_instances_are_taken_over_within_the_lease_bound(lab):
    fabric = lab.fabric()
    client = lab.client(fabric)
    items = list(range(40_000))
    create_stream(client, "numbers", 2)

    def times_ten(x):
        return x * 10

    register_function(client, times_ten, "tens", ["numbers"], parallelism=2)
    pool = lab.workers(fabric, 2)
    # ~14 s of input: the takeover (about 6 s after the kill) happens while items still arrive.
    writer = PacedWriter(fabric.address, "numbers", items, chunk=300, pause=0.1)
    writer.start()
    try:
        ids = [worker_id_of(client, pid) for pid in pool.pids]
        # Fair share first: each worker holds one instance.
        wait_until(lambda: sorted(map(str, holders(client, "tens", 2).values())) == sorted(ids), 20,
                   f"one instance per worker ({ids})")
        tens = open_stream(client, "tens")
        wait_until(lambda: tens.count() > 0, 20, "output to flow")

        victim_id = holders(client, "tens", 2)[0]
        victim = ids.index(victim_id)
        survivor_id = ids[1 - victim]
        written_at_kill = writer.acknowledged
        started = time.monotonic()
        pool.kill(victim)
        wait_until(lambda: set(holders(client, "tens", 2).values()) == {survivor_id}, 20,
                   f"the survivor {survivor_id} to hold both instances")
        takeover = time.monotonic() - started
        written_at_takeover = writer.acknowledged
    except BaseException:
        writer.stop()
        raise
    writer.finish(60)

    result = wait_output(lab, client, "tens", 60)
    source = partitions_of(open_stream(client, "numbers"))
    assert source == [items[0::2], items[1::2]]
    assert partitions_of(result) == expected_by_partition(source, times_ten)
    assert list(open_stream(client, "tens.errors")) == []
    record("worker_takeover", takeover_s=round(takeover, 2), items_checked=len(items),
           input_written_at_kill=written_at_kill, input_written_at_takeover=written_at_takeover)
    assert written_at_takeover < len(items), "the kill and the takeover did not happen mid-stream"
    assert takeover <= TAKEOVER_BOUND, f"takeover took {takeover:.1f}s"


# ======================================================================================================
# 2. scale-out
# ======================================================================================================


def test_a_second_worker_takes_its_fair_share_within_seconds(lab):
    fabric = lab.fabric()
    client = lab.client(fabric)
    items = list(range(20_000))
    create_stream(client, "numbers", 2)

    def negate(x):
        return -x

    register_function(client, negate, "negated", ["numbers"], parallelism=2)
    pool = lab.workers(fabric, 1)
    writer = PacedWriter(fabric.address, "numbers", items, chunk=200, pause=0.1)  # ~10 s of input
    writer.start()
    try:
        first = worker_id_of(client, pool.pids[0])
        wait_until(lambda: set(holders(client, "negated", 2).values()) == {first}, 20,
                   "the only worker to hold both instances")
        spawned = time.monotonic()
        pool.scale(2)
        second = worker_id_of(client, pool.pids[1])  # its first heartbeat: the worker process is up
        started = time.monotonic()
        wait_until(lambda: sorted(map(str, holders(client, "negated", 2).values())) == sorted([first, second]),
                   20, "one instance per worker")
        moved = time.monotonic() - started
        from_spawn = time.monotonic() - spawned
        written_at_move = writer.acknowledged
    except BaseException:
        writer.stop()
        raise
    writer.finish(60)

    result = wait_output(lab, client, "negated", 60)
    source = partitions_of(open_stream(client, "numbers"))
    assert partitions_of(result) == expected_by_partition(source, negate)
    assert sorted(x for part in source for x in part) == items
    record("scale_out", fair_share_s=round(moved, 2), fair_share_from_spawn_s=round(from_spawn, 2),
           items_checked=len(items), input_written_at_move=written_at_move)
    assert written_at_move < len(items), "the second worker arrived after the input was complete"
    assert moved <= TAKEOVER_BOUND, f"the second worker got its share after {moved:.1f}s"


# ======================================================================================================
# 3. exactly-once under chaos
# ======================================================================================================

CHAOS_ITEMS = 200_000
CHAOS_KILLS = 6


class Killer(threading.Thread):
    """Kills a random worker of ``pool`` with SIGKILL every 2-3 s and starts a replacement at once."""

    def __init__(self, pool: WorkerPool, kills: int, rng: random.Random, probe: Callable[[], Any]) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.pool = pool
        self.wanted = kills
        self.rng = rng
        self.probe = probe
        self.kills: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        try:
            while len(self.kills) < self.wanted and not self.halt.wait(self.rng.uniform(2.0, 3.0)):
                size = len(self.pool)
                index = self.rng.randrange(size)
                pid = self.pool.kill(index)
                self.kills.append({"at_s": round(time.monotonic() - started, 2), "pid": pid, "workers": size,
                                   **self.probe()})
                self.pool.scale(size)
        except BaseException as exc:
            self.error = exc


def test_exactly_once_through_two_chained_functions_while_workers_are_killed(lab):
    seed = int(os.environ.get("PERPER_CHAOS_SEED", time.time_ns() % 1_000_000))
    fabric = lab.fabric()
    client = lab.client(fabric)
    items = list(range(CHAOS_ITEMS))
    create_stream(client, "chaos_in", 2)

    def triple_unless_seventh(x):
        return None if x % 7 == 0 else {"id": x, "v": x * 3}

    def pair_plus_one(d):
        return (d["id"], d["v"] + 1)

    register_function(client, triple_unless_seventh, "chaos_mid", ["chaos_in"], parallelism=2)
    register_function(client, pair_plus_one, "chaos_out", ["chaos_mid"], parallelism=2)
    pool = lab.workers(fabric, 2)
    mid = open_stream(client, "chaos_mid")
    # The input arrives over ~20 s, so that every kill lands while the pipeline is busy.
    writer = PacedWriter(fabric.address, "chaos_in", items, chunk=1000, pause=0.1)

    with FabricClient(fabric.address, timeout=10.0) as probe_client:
        probe_mid, probe_out = open_stream(probe_client, "chaos_mid"), open_stream(probe_client, "chaos_out")

        def probe() -> dict[str, Any]:
            try:
                return {"input_written": writer.acknowledged, "mid_items": probe_mid.count(),
                        "out_items": probe_out.count(), "out_closed": probe_out.closed}
            except FabricError as exc:
                return {"probe_error": str(exc)}

        killer = Killer(pool, CHAOS_KILLS, random.Random(seed), probe)
        started = time.monotonic()
        writer.start()
        killer.start()
        try:
            writer.finish(120)
            killer.join(60)
            assert not killer.is_alive(), "the killer did not finish"
            assert killer.error is None, f"the killer failed: {killer.error!r}"
            result = wait_output(lab, client, "chaos_out", 180)
            elapsed = time.monotonic() - started
        finally:
            killer.halt.set()
            killer.join(30)
            writer.stop()

    source = partitions_of(open_stream(client, "chaos_in"))
    assert source == [items[0::2], items[1::2]], "the input itself is not what was written"
    expected_mid = expected_by_partition(source, triple_unless_seventh)
    expected_out = [[pair_plus_one(d) for d in part] for part in expected_mid]
    got_mid, got_out = partitions_of(mid), partitions_of(result)
    for partition in range(2):
        _assert_same_sequence(got_mid[partition], expected_mid[partition], f"chaos_mid partition {partition}")
        _assert_same_sequence(got_out[partition], expected_out[partition], f"chaos_out partition {partition}")
    assert list(open_stream(client, "chaos_mid.errors")) == []
    assert list(open_stream(client, "chaos_out.errors")) == []
    checked = sum(map(len, got_out))
    record("exactly_once_chaos", seed=seed, kills=len(killer.kills), input_items=len(items),
           output_items_checked=checked, mid_items_checked=sum(map(len, got_mid)),
           elapsed_s=round(elapsed, 1), kill_log=killer.kills)
    assert len(killer.kills) >= 5
    assert all(kill["workers"] == 2 for kill in killer.kills), "a worker died on its own (see kill_log)"
    assert len(pool) == 2, f"a worker died on its own:\n{lab.worker_logs()}"
    assert not any(kill.get("out_closed") for kill in killer.kills), "a kill came after the pipeline had finished"


def _assert_same_sequence(got: list[Any], expected: list[Any], what: str) -> None:
    """Equal lists, or a message that says what is missing, duplicated or out of order."""
    if got == expected:
        return

    def key(item: Any) -> Any:
        return json.dumps(item, sort_keys=True) if isinstance(item, dict) else item

    seen, wanted = Counter(map(key, got)), Counter(map(key, expected))
    missing, extra = list((wanted - seen).elements()), list((seen - wanted).elements())
    first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                 min(len(got), len(expected)))
    raise AssertionError(
        f"{what}: {len(got)} items, expected {len(expected)}; missing {len(missing)} (first {missing[:5]}), "
        f"extra or duplicated {len(extra)} (first {extra[:5]}); first difference at index {first}: "
        f"got {got[first:first + 3]}, expected {expected[first:first + 3]}"
    )


# ======================================================================================================
# 4. an Ignite node crashes
# ======================================================================================================


def test_killing_an_ignite_node_loses_no_acknowledged_item(lab):
    # Node 0 by default: the oldest node (Ignite's coordinator) and the first address of every client.
    # PERPER_FAULT_KILL_NODE=1 kills the other one instead.
    victim = int(os.environ.get("PERPER_FAULT_KILL_NODE", "0"))
    fabric = lab.fabric("fabric2", nodes=2)
    client = lab.client(fabric)  # given both node addresses, like the workers
    items = list(range(40_000))
    create_stream(client, "numbers", 2)

    def odd_of(x):
        return 2 * x + 1

    register_function(client, odd_of, "odds", ["numbers"], parallelism=2)
    pool = lab.workers(fabric, 2)
    writer = PacedWriter(fabric.address, "numbers", items, chunk=500, pause=0.05)  # ~6 s of input
    writer.start()
    odds = open_stream(client, "odds")
    try:
        wait_until(lambda: odds.count() > 0 and writer.acknowledged >= 10_000, 30, "output to flow")
        written_at_kill = writer.acknowledged
        out_at_kill = odds.count()
        started = time.monotonic()
        fabric.kill_node(victim)
        wait_until(lambda: odds.count() > out_at_kill, 60, "output to flow again after the node crash")
        stalled = time.monotonic() - started
    except BaseException:
        writer.stop()
        raise
    writer.finish(120)

    result = wait_output(lab, client, "odds", 120)
    assert [node.running for node in fabric.status()] == [index != victim for index in range(2)]
    assert client.server_count() == 1
    assert len(pool) == 2, "a worker died with the node"
    source = partitions_of(open_stream(client, "numbers"))
    assert source == [items[0::2], items[1::2]], "acknowledged input items were lost"
    assert partitions_of(result) == expected_by_partition(source, odd_of)
    assert list(open_stream(client, "odds.errors")) == []
    record("ignite_node_crash", killed_node=victim, input_written_at_kill=written_at_kill,
           output_at_kill=out_at_kill, output_stall_s=round(stalled, 2), items_checked=len(items))
    assert written_at_kill < len(items), "the node was killed after the input was complete"


# ======================================================================================================
# 5. the whole (persistent) fabric restarts under running workers
# ======================================================================================================


def offsets(client: FabricClient, output: str, partitions: int) -> list[dict[str, Any] | None]:
    """The committed progress of each output partition of the function writing ``output``."""
    generation = getattr(get_function(client, output), "generation", None)
    where = () if generation is None else (generation,)
    keys = [offset_key(output, *where, q) for q in range(partitions)]
    stored = client.cache(STATE_CACHE).get_all(keys)
    return [json.loads(stored[key]) if key in stored else None for key in keys]


def test_a_persistent_fabric_restart_keeps_streams_functions_and_offsets(lab, tmp_path):
    began = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    fabric = lab.fabric("pfabric", persistence=tmp_path / "pds")
    phase("fabric_started")
    client = lab.client(fabric)
    first_half, second_half = list(range(0, 10_000)), list(range(10_000, 20_000))
    numbers = create_stream(client, "numbers", 2)
    writer = numbers.writer(batch_size=100)
    writer.extend(first_half)
    writer.flush()

    def slow_square(x):
        import time

        time.sleep(0.0005)
        return x * x

    phase("first_half_written")
    spec = register_function(client, slow_square, "squares", ["numbers"], parallelism=2)
    pool = lab.workers(fabric, 2)
    squares = open_stream(client, "squares")
    def committed_everywhere() -> list[dict[str, Any]] | None:
        found = offsets(client, "squares", 2)
        return found if all(entry and entry["seq"] > 0 for entry in found) else None

    # An offset is committed just after its output is written: wait until both partitions have one.
    committed_before = wait_until(committed_everywhere, 30, "offsets to be committed in both partitions")
    phase("output_flowing")
    output_before = partitions_of(squares)  # at least what the committed offsets cover

    fabric.stop()  # every node at once; the workers keep running and must ride it out
    stopped = time.monotonic()
    time.sleep(3.0)  # long enough for every worker to meet the outage
    assert len(pool) == 2, f"a worker died while the fabric was down:\n{lab.worker_logs()}"
    restarted = lab.restart(fabric)
    back = time.monotonic()
    phase("restarted")
    assert restarted.address == fabric.address

    # The same client object reconnects; the registry, the streams and the committed offsets survived
    # (the workers only ever move an offset forward).
    assert open_stream(client, "numbers").partitions == 2
    assert open_stream(client, "squares").producer == "squares"
    assert get_function(client, "squares").version == spec.version
    committed_after = offsets(client, "squares", 2)
    for before, after in zip(committed_before, committed_after, strict=True):
        assert before is not None and after is not None and after["seq"] >= before["seq"] > 0, \
            (committed_before, committed_after)

    phase("checked_after_restart")
    # A new writer continues the input from the persisted heads.
    writer = open_stream(client, "numbers").writer(batch_size=100)
    writer.extend(second_half)
    writer.close()
    result = wait_output(lab, client, "squares", 90)
    closed = time.monotonic()
    phase("output_closed")
    assert len(pool) == 2, f"a worker died:\n{lab.worker_logs()}"

    items = first_half + second_half
    source = partitions_of(open_stream(client, "numbers"))
    assert source == [items[0::2], items[1::2]]
    got = partitions_of(result)
    assert got == [[x * x for x in part] for part in source]  # slow_square without the sleep
    for partition in range(2):
        assert got[partition][:len(output_before[partition])] == output_before[partition]
    final = offsets(client, "squares", 2)
    assert [entry["consumed"] for entry in final] == [len(part) for part in source]
    assert all(entry["done"] for entry in final)
    # The outage reached the workers: a call failed past the client's retries, or one blocked in them
    # for longer than a lease lives. Which of the two depends on timing.
    logs = lab.worker_logs(chars=10**6)
    assert "retrying" in logs or "lost lease" in logs, "the workers never noticed the outage"
    record("persistent_restart", outage_s=round(back - stopped, 1), resumed_to_closed_s=round(closed - back, 1),
           committed_before_outage=committed_before, committed_after_restart=committed_after,
           output_before_outage=sum(map(len, output_before)), items_checked=len(items), phases_s=phases)


# ======================================================================================================
# 6. the client on a stopped and restarted fabric
# ======================================================================================================


def test_a_client_fails_fast_on_a_stopped_fabric_and_reconnects_after_a_restart(lab):
    fabric = lab.fabric("cfabric")
    client = FabricClient(fabric.address)  # the default timeout
    lab.clients.append(client)
    cache = client.cache("perper-control-probe")
    cache.put("key", "before")
    assert client.server_count() == 1

    fabric.stop()
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: cache.get("key"),
        "replace_if_equals": lambda: cache.replace_if_equals("key", "before", "during"),
        "sql": client.server_count,
        "a new client": lambda: FabricClient(fabric.address),
    }
    failed_after: dict[str, float] = {}
    for what, call in calls.items():
        started = time.monotonic()
        with pytest.raises(FabricUnavailable) as caught:
            call()
        failed_after[what] = round(time.monotonic() - started, 2)
        assert fabric.address in str(caught.value)
        assert failed_after[what] < 10.0, f"{what} took {failed_after[what]}s to fail"

    lab.restart(fabric)  # same ports; an in-memory fabric comes back empty
    started = time.monotonic()
    assert cache.get("key") is None  # the very next call reconnects
    reconnected = time.monotonic() - started
    cache.put("key", "after")
    assert cache.get("key") == "after"
    assert client.server_count() == 1
    record("client_robustness", fails_after_s=failed_after, reconnect_s=round(reconnected, 2))


# ======================================================================================================
# 7. error policies
# ======================================================================================================


@pytest.fixture(scope="module")
def policy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LocalFabric, FabricClient]]:
    """One fabric and one worker for the error-policy tests (they do not disturb one another)."""
    lab = Lab(tmp_path_factory.mktemp("policies"))
    try:
        fabric = lab.fabric()
        client = lab.client(fabric)
        lab.workers(fabric, 1)
        yield lab, fabric, client
    finally:
        lab.close()


def fill(client: FabricClient, name: str, items: list[Any], partitions: int = 1, batch_size: int = 100) -> Stream:
    stream = create_stream(client, name, partitions)
    writer = stream.writer(batch_size=batch_size)
    writer.extend(items)
    writer.close()
    return stream


def test_skip_policy_sends_each_failing_item_to_the_errors_stream(policy_lab, unique_name):
    lab, _, client = policy_lab
    items = list(range(3000))
    source = fill(client, unique_name("in"), items, partitions=2)

    def half_unless_thirteenth(x):
        if x % 13 == 0:
            raise ValueError(f"thirteen divides {x}")
        return x / 2

    output = unique_name("out")
    register_function(client, half_unless_thirteenth, output, [source.name], parallelism=2, on_error="skip")
    result = wait_output(lab, client, output, 60)
    errors = wait_output(lab, client, output + ".errors", 60)

    by_partition = partitions_of(open_stream(client, source.name))
    assert partitions_of(result) == [[x / 2 for x in part if x % 13] for part in by_partition]
    records = partitions_of(errors)
    assert [[r["item"] for r in part] for part in records] == [[x for x in part if x % 13 == 0]
                                                                for part in by_partition]
    for record_ in (r for part in records for r in part):
        assert record_["error"] == "ValueError"
        assert record_["message"] == f"thirteen divides {record_['item']}"
        assert "half_unless_thirteenth" in record_["traceback"]
    assert failure(client, output) is None


def test_retry_policy_retries_each_failing_item_before_giving_up(policy_lab, unique_name):
    lab, _, client = policy_lab
    items = list(range(1000))
    source = fill(client, unique_name("in"), items)
    attempts: dict[int, int] = {}  # per worker process: the function's own state, shipped by value

    def flaky(x):
        attempts[x] = attempts.get(x, 0) + 1
        if x % 10 == 3:
            raise RuntimeError(f"{x} always fails (attempt {attempts[x]})")
        if attempts[x] < (3 if x % 5 == 0 else 2):  # fail once, or twice for multiples of five
            raise RuntimeError(f"{x} fails for now (attempt {attempts[x]})")
        return (x, attempts[x])

    output = unique_name("out")
    register_function(client, flaky, output, [source.name], on_error="retry=2")
    result = wait_output(lab, client, output, 60)
    errors = wait_output(lab, client, output + ".errors", 60)

    assert list(result) == [(x, 3 if x % 5 == 0 else 2) for x in items if x % 10 != 3]
    records = list(errors)
    assert [r["item"] for r in records] == [x for x in items if x % 10 == 3]
    assert {r["message"] for r in records} == {f"{x} always fails (attempt 3)" for x in items if x % 10 == 3}
    assert failure(client, output) is None


def test_stop_policy_fails_the_function_and_wait_closed_raises(policy_lab, unique_name):
    lab, fabric, client = policy_lab
    items = list(range(2000))
    source = fill(client, unique_name("in"), items)

    def refuse_1234(x):
        if x == 1234:
            raise ValueError("1234 is not welcome")
        return x + 1

    output = unique_name("out")
    register_function(client, refuse_1234, output, [source.name], on_error="stop")
    perper_lab.connect(fabric.address)
    try:
        out = perper_lab.stream(output)
        with pytest.raises(FunctionError, match="1234 is not welcome") as caught:
            out.wait_closed(60)
        status = perper_lab.status()["functions"].set_index("output").loc[output]
    finally:
        perper_lab.disconnect()

    assert f"the function writing {output!r} failed" in str(caught.value)
    failed = failure(client, output)
    assert failed["state"] == "failed"
    assert "policy 'stop'" in failed["reason"] and "ValueError: 1234 is not welcome" in failed["reason"]
    assert failed["item"] == "1234"
    assert "refuse_1234" in failed["traceback"]
    assert status["state"] == "failed"
    assert status["errors"] == 1, "the item that stopped the function is counted as an error"
    got = list(open_stream(client, output))
    assert got == [x + 1 for x in range(len(got))] and len(got) < 1234, "output past the failing item"
    time.sleep(2.5)  # a failed function is not run again: nothing more comes
    assert list(open_stream(client, output)) == got
    assert not open_stream(client, output).closed


# ======================================================================================================
# Engine bugs found by this suite, fixed since: each test keeps its case
# ======================================================================================================


def leave_time_wait(host: str, port: int) -> None:
    """Leave a TIME_WAIT connection on ``host:port``, as a stopped or crashed node does on its ports."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen()
        with socket.create_connection((host, port)):
            accepted, _ = server.accept()
            accepted.close()  # the server side closes first: its end of the connection waits 60 s
            time.sleep(0.05)


def test_a_port_in_time_wait_is_not_in_use(tmp_path):
    fabric = LocalFabric(tmp_path / "run", port_offset=free_port_offset(), exit_with_pid=os.getpid())
    leave_time_wait(fabric.host, fabric.layout(0).client_port)
    try:
        fabric.start(timeout=60)  # the JVM binds the port (its server sockets reuse addresses)
        assert fabric.status()[0].running
    finally:
        fabric.stop()


def test_restart_in_the_same_run_dir_waits_for_the_new_node(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # What an earlier, successful run of node 0 left in this run directory.
    (run_dir / "node-0.log").write_text("PERPER-FABRIC-READY node=0 client=127.0.0.1:10800 servers=1\n")
    broken = tmp_path / "broken.jar"
    broken.write_bytes(b"not a jar: this JVM exits at once")
    monkeypatch.setenv("PERPER_FABRIC_JAR", str(broken))
    fabric = LocalFabric(run_dir, port_offset=free_port_offset(), exit_with_pid=os.getpid())
    try:
        # The new JVM dies at once; the launcher must say so, not wait for handshakes until its timeout.
        with pytest.raises(FabricStartError, match="exited with code"):
            fabric.start(timeout=5)
    finally:
        fabric.stop()


def test_stop_policy_also_writes_the_failing_item_to_the_errors_stream(policy_lab, unique_name):
    lab, _, client = policy_lab
    source = fill(client, unique_name("in"), list(range(300)))

    def refuse_123(x):
        if x == 123:
            raise ValueError("123 is not welcome")
        return x

    output = unique_name("out")
    register_function(client, refuse_123, output, [source.name], on_error="stop")
    wait_until(lambda: failure(client, output), 30, "the function to fail")
    assert [r["item"] for r in open_stream(client, output + ".errors")] == [123]


def test_a_failed_flush_can_be_retried_without_losing_items(policy_lab, unique_name, monkeypatch):
    _, fabric, _ = policy_lab
    with FabricClient(fabric.address, timeout=10.0) as own:
        stream = create_stream(own, unique_name("s"))
        writer = stream.writer(batch_size=1000)
        writer.extend(range(10))
        batches = own.cache("perper-data-batches")
        real_put_all = batches.put_all

        def put_all_failing_once(pairs: dict[str, Any]) -> None:
            monkeypatch.setattr(batches, "put_all", real_put_all)
            raise FabricUnavailable("injected: the fabric went away during put_all")

        monkeypatch.setattr(batches, "put_all", put_all_failing_once)
        with pytest.raises(FabricUnavailable):
            writer.flush()
        writer.flush()  # the caller retries
        writer.close()
        assert list(open_stream(own, stream.name)) == list(range(10))


def test_a_long_extend_failing_midway_keeps_what_it_wrote_once_and_the_rest_buffered(policy_lab, unique_name,
                                                                                      monkeypatch):
    _, fabric, _ = policy_lab
    items = list(range(10_000))
    with FabricClient(fabric.address, timeout=10.0) as own:
        stream = create_stream(own, unique_name("s"), partitions=3)
        writer = stream.writer(batch_size=100)
        batches = own.cache("perper-data-batches")
        real_put_all = batches.put_all
        calls = []

        def put_all_failing_on_the_tenth(pairs: dict[str, Any]) -> None:
            calls.append(len(pairs))
            if len(calls) == 10:
                monkeypatch.setattr(batches, "put_all", real_put_all)
                raise FabricUnavailable("injected: the fabric went away during put_all")
            real_put_all(pairs)

        monkeypatch.setattr(batches, "put_all", put_all_failing_on_the_tenth)
        with pytest.raises(FabricUnavailable):
            writer.extend(items)
        writer.close()  # the caller goes on: what was not written is still buffered
        got = [[item for _, batch in open_stream(own, stream.name).read_batches(p) for item in batch]
               for p in range(3)]
        assert got == [items[0::3], items[1::3], items[2::3]]


def test_a_fabric_error_while_setting_up_an_instance_does_not_fail_the_function(lab, monkeypatch):
    from perper_lab.errors import FabricTimeout
    from perper_lab.runtime import worker as worker_module

    fabric = lab.fabric()
    client = lab.client(fabric)
    source = fill(client, "numbers", list(range(100)))
    register_function(client, lambda x: x + 1, "plus_one", [source.name])
    real_make_runner = worker_module.make_runner

    def make_runner_timing_out_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(worker_module, "make_runner", real_make_runner)
        raise FabricTimeout("injected: get_all on perper-control-state took longer than 10s")

    monkeypatch.setattr(worker_module, "make_runner", make_runner_timing_out_once)
    worker = worker_module.Worker(fabric.address, worker_id="in-process")  # an in-process worker
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    output = open_stream(client, "plus_one")
    try:
        wait_until(lambda: failure(client, "plus_one") or output.closed, 30, "the function to finish or fail")
    finally:
        stop.set()
        thread.join(30)
    assert failure(client, "plus_one") is None
    assert list(output) == list(range(1, 101))


def test_a_finished_function_gives_its_slot_to_the_next_one(lab):
    fabric = lab.fabric()
    client = lab.client(fabric)
    pool = WorkerPool(fabric.address, log_dir=lab.root / "slots", slots=1)
    lab.pools.append(pool)
    pool.scale(1)
    register_function(client, lambda x: x * 2, "doubled", [fill(client, "first", [1, 2, 3]).name])
    assert list(wait_output(lab, client, "doubled", 30)) == [2, 4, 6]
    register_function(client, lambda x: x * 3, "tripled", [fill(client, "second", [1, 2, 3]).name])
    assert list(wait_output(lab, client, "tripled", 8)) == [3, 6, 9]  # leases are refreshed every second
