"""Stream functions run end to end by a real worker process against the real fabric.

The functions are defined inside the tests on purpose: cloudpickle ships nested functions by value,
whereas a module-level function of this test module would be pickled by reference to a module that
the worker process cannot import.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import perper_lab
from perper_lab.errors import FunctionNotFound, FunctionRejected, PerperError, StreamNotFound
from perper_lab.runtime import get_function, register_function
from perper_lab.runtime.registry import STATE_CACHE, status_key, stop_function, wait_deployed
from perper_lab.streams import Stream, create_stream, open_stream


def fill(client, name: str, items: list, partitions: int = 1, batch_size: int = 100) -> Stream:
    stream = create_stream(client, name, partitions)
    writer = stream.writer(batch_size=batch_size)
    writer.extend(items)
    writer.close()
    return stream


def wait_output(client, workers, output: str, timeout: float = 60.0) -> Stream:
    """The output stream once the function has drained its input; on a timeout, say why."""
    stream = open_stream(client, output)
    try:
        stream.wait_closed(timeout)
    except TimeoutError as exc:
        failure = client.cache(STATE_CACHE).get(status_key(output))
        logs = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in sorted(Path(workers.log_dir).glob("*.log")))
        raise AssertionError(f"{exc}\nfunction status: {failure}\nworkers alive: {workers.pids}\n{logs}") from None
    return stream


def test_map_function_runs_end_to_end_through_a_worker(client, workers, unique_name):
    source = fill(client, unique_name("in"), list(range(2000)), partitions=2, batch_size=64)

    def triple_unless_multiple_of_five(x):
        return None if x % 5 == 0 else {"x": x, "tripled": x * 3}

    output = unique_name("out")
    spec = register_function(client, triple_unless_multiple_of_five, output, [source.name])
    result = wait_output(client, workers, output)

    assert spec.function_name == "triple_unless_multiple_of_five"
    assert result.partitions == source.partitions
    expected_per_partition = [[triple_unless_multiple_of_five(x) for _, batch in source.read_batches(p)
                               for x in batch if x % 5] for p in range(source.partitions)]
    for partition, expected in enumerate(expected_per_partition):
        got = [item for _, batch in result.read_batches(partition) for item in batch]
        assert got == expected, f"partition {partition} differs"
    expected_all = [triple_unless_multiple_of_five(x) for x in range(2000) if x % 5]
    assert sorted(result, key=lambda item: item["x"]) == expected_all
    assert result.count() == 1600  # None dropped every fifth item
    assert list(open_stream(client, output + ".errors")) == []


def test_exceptions_go_to_the_errors_stream_and_other_items_to_the_output(client, workers, unique_name):
    source = fill(client, unique_name("in"), list(range(300)), batch_size=50)

    def inverse_of_distance_to_hundred(x):
        if x % 7 == 0:
            raise ValueError(f"seven divides {x}")
        return 1 / (x - 100)  # ZeroDivisionError at 100

    output = unique_name("out")
    register_function(client, inverse_of_distance_to_hundred, output, [source.name])
    result = wait_output(client, workers, output)
    errors = wait_output(client, workers, output + ".errors")

    failing = [x for x in range(300) if x % 7 == 0 or x == 100]
    assert list(result) == [1 / (x - 100) for x in range(300) if x not in failing]
    records = list(errors)
    assert [record["item"] for record in records] == failing
    for record in records:
        assert {"error", "message", "traceback", "item"} <= set(record)
        if record["item"] == 100:
            assert record["error"] == "ZeroDivisionError"
            assert "division by zero" in record["message"]
        else:
            assert record["error"] == "ValueError"
            assert record["message"] == f"seven divides {record['item']}"
        assert record["error"] in record["traceback"]
        assert "inverse_of_distance_to_hundred" in record["traceback"]
        assert record["function"] == "inverse_of_distance_to_hundred"
    assert set(errors.to_pandas().columns) >= {"error", "message", "traceback", "item"}


def test_registering_on_a_missing_input_raises_stream_not_found_with_a_clear_message(client, unique_name):
    missing = unique_name("no_such_input")
    output = unique_name("out")

    with pytest.raises(StreamNotFound) as caught:
        register_function(client, lambda x: x, output, [missing])

    message = str(caught.value)
    assert f"no stream named {missing!r}" in message
    assert client.address in message
    assert "existing streams" in message or "no streams yet" in message
    with pytest.raises(StreamNotFound):  # a failed registration leaves no output stream behind
        open_stream(client, output)
    with pytest.raises(FunctionNotFound):
        get_function(client, output)


def test_unpicklable_function_is_rejected(client, unique_name):
    source = fill(client, unique_name("in"), [1, 2, 3])
    lock = threading.Lock()

    def guarded(x):
        with lock:
            return x

    output = unique_name("out")
    with pytest.raises(FunctionRejected) as caught:
        register_function(client, guarded, output, [source.name])

    message = str(caught.value)
    assert "'guarded' cannot be shipped to the workers" in message
    assert "lock" in message.lower()
    with pytest.raises(FunctionNotFound):
        get_function(client, output)


def test_a_stream_not_written_by_a_function_is_rejected_as_output(client, unique_name):
    source = fill(client, unique_name("in"), [1, 2, 3])
    plain = create_stream(client, unique_name("plain"))
    plain.append("kept")

    with pytest.raises(FunctionRejected, match="not written by a function"):
        register_function(client, lambda x: x, plain.name, [source.name])
    with pytest.raises(FunctionRejected, match="also its input"):
        register_function(client, lambda x: x, source.name, [source.name])
    assert list(plain) == ["kept"]


def test_registering_the_same_function_twice_returns_the_same_version(client, workers, unique_name):
    source = fill(client, unique_name("in"), list(range(50)))

    def add_one(x):
        return x + 1

    output = unique_name("out")
    first = register_function(client, add_one, output, [source.name])
    second = register_function(client, add_one, output, [source.name])

    assert second.version == first.version
    assert second.created == first.created  # the stored spec was kept, not rewritten
    assert get_function(client, output).version == first.version
    assert list(wait_output(client, workers, output)) == list(range(1, 51))
    third = register_function(client, add_one, output, [source.name])
    assert third.version == first.version

    def add_two(x):
        return x + 2

    assert register_function(client, add_two, output, [source.name]).version != first.version


def test_function_status_is_not_failed_after_a_clean_run(client, workers, unique_name):
    source = fill(client, unique_name("in"), ["a", "bb", "ccc"])

    def length(text):
        return len(text)

    output = unique_name("out")
    register_function(client, length, output, [source.name])
    assert list(wait_output(client, workers, output)) == [1, 2, 3]
    failure = client.cache(STATE_CACHE).get(status_key(output))
    assert failure is None, json.loads(failure)
    functions = perper_lab.status(client)["functions"].set_index("output")
    assert functions.loc[output, "state"] == "finished"  # its input was closed and is drained

    stop_function(client, output)  # stopping what has finished does not rewrite its history
    functions = perper_lab.status(client)["functions"].set_index("output")
    assert functions.loc[output, "state"] == "finished"


def test_a_source_that_fails_says_so_in_status(client, workers, unique_name):
    def not_a_generator():
        return None  # not iterable: the source cannot start

    output = unique_name("src")
    register_function(client, not_a_generator, output, [], kind="source")
    deadline = time.monotonic() + 30
    while (failure := client.cache(STATE_CACHE).get(status_key(output))) is None:
        assert time.monotonic() < deadline, "the failing source was never marked failed"
        time.sleep(0.2)
    reason = json.loads(failure)["reason"]
    assert reason.startswith("the source failed: ") and "not iterable" in reason
    assert "policy" not in reason  # a source has no error policy to blame


def items_of(stream: Stream, partition: int) -> list:
    return [item for _, batch in stream.read_batches(partition) for item in batch]


def test_merge_gives_each_input_partition_its_own_output_partition_in_order(client, workers, unique_name):
    left = fill(client, unique_name("left"), [("L", i) for i in range(500)], partitions=2, batch_size=32)
    right = fill(client, unique_name("right"), [("R", i) for i in range(300)], batch_size=32)

    def tag(item):
        return (item[0].lower(), item[1])

    output = unique_name("merged")
    register_function(client, tag, output, [left.name, right.name], parallelism=2)
    merged = wait_output(client, workers, output)

    assert merged.partitions == 3  # left's 2 partitions, then right's 1
    assert items_of(merged, 0) == [tag(x) for x in items_of(left, 0)]
    assert items_of(merged, 1) == [tag(x) for x in items_of(left, 1)]
    assert items_of(merged, 2) == [tag(x) for x in items_of(right, 0)]


def test_source_function_writes_its_items_over_partitions_and_closes(client, workers, unique_name):
    def countdown():
        yield from range(2500, 0, -1)

    output = unique_name("src")
    register_function(client, countdown, output, [], kind="source", partitions=2)
    stream = wait_output(client, workers, output)

    assert stream.partitions == 2 and stream.count() == 2500
    by_batch = sorted((seq * 2 + p, batch) for p in range(2) for seq, batch in stream.read_batches(p))
    assert [x for _, batch in by_batch for x in batch] == list(range(2500, 0, -1))


def test_seed_style_main_gets_a_context_with_stream_and_position(client, workers, unique_name):
    source = fill(client, unique_name("in"), [1, 2, 3, 4], batch_size=2)

    def main(context, data):
        context.logger.info("item %s at %s", data, context.position)
        return {"value": data * 10, "stream": context.stream, "position": context.position}

    output = unique_name("out")
    spec = register_function(client, main, output, [source.name])
    result = list(wait_output(client, workers, output))

    assert spec.convention == "context"
    assert [r["value"] for r in result] == [10, 20, 30, 40]
    assert {r["stream"] for r in result} == {source.name}
    assert [r["position"] for r in result] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]


def test_batch_function_maps_each_batch_as_a_dataframe(client, workers, unique_name):
    source = fill(client, unique_name("in"), [{"carrier": c, "delay": d} for c, d in
                                               [("AA", 5), ("UA", 70), ("AA", 90), ("B6", 61)] * 50])

    def late(df):
        return df[df["delay"] > 60].assign(hours=lambda d: d["delay"] / 60)

    output = unique_name("out")
    register_function(client, late, output, [source.name], kind="batch")
    frame = wait_output(client, workers, output).to_pandas()

    assert len(frame) == 150 and set(frame["carrier"]) == {"UA", "AA", "B6"}
    assert (frame["hours"] == frame["delay"] / 60).all()


def test_a_batch_function_after_a_filter_skips_the_batches_the_filter_emptied(client, workers, unique_name):
    source = fill(client, unique_name("in"), [{"k": i % 3, "v": i} for i in range(3000)], batch_size=100)
    kept, totals = unique_name("kept"), unique_name("totals")

    def keep_last_ten(row):
        return row if row["v"] >= 2990 else None

    def total_per_key(df):
        return df.groupby("k", as_index=False)["v"].sum()

    register_function(client, keep_last_ten, kept, [source.name])
    register_function(client, total_per_key, totals, [kept], kind="batch")
    result = wait_output(client, workers, totals).to_pandas()

    assert sorted(zip(result["k"], result["v"], strict=True)) == [
        (k, sum(v for v in range(2990, 3000) if v % 3 == k)) for k in range(3)]
    assert open_stream(client, totals + ".errors").count() == 0  # the 29 empty batches were no errors


def test_waiting_on_a_stopped_functions_output_says_it_was_stopped(client, workers, unique_name):
    source = create_stream(client, unique_name("in"))
    source.append(1, 2, 3)  # left open: the function would run for ever
    output = unique_name("out")
    register_function(client, lambda x: x, output, [source.name])
    stop_function(client, output)
    perper_lab.connect(client.address)
    started = time.monotonic()
    with pytest.raises(PerperError, match=f"the function writing {output!r} was stopped"):
        perper_lab.stream(output).wait_closed(timeout=30)
    assert time.monotonic() - started < 5


def test_switching_between_batch_and_item_functions_needs_a_replay(client, workers, unique_name):
    source = fill(client, unique_name("in"), [{"v": 1}])
    output = unique_name("out")
    register_function(client, lambda x: x, output, [source.name])
    with pytest.raises(FunctionRejected, match="would mix two shapes of items in one stream"):
        register_function(client, lambda df: df, output, [source.name], kind="batch")
    assert register_function(client, lambda df: df, output, [source.name], kind="batch", replay=True).generation == 1


@pytest.mark.parametrize("fn, kind, message", [
    (lambda a, b: a, "map", r"takes one argument \(the item\).*takes 2: \(a, b\)"),
    (lambda: 1, "map", "takes 0"),
    (lambda x: iter([x]), "source", "a source function takes no arguments"),
])
def test_a_function_with_the_wrong_arguments_is_rejected(client, unique_name, fn, kind, message):
    inputs = [] if kind == "source" else [fill(client, unique_name("in"), [1]).name]
    with pytest.raises(FunctionRejected, match=message):
        register_function(client, fn, unique_name("out"), inputs, kind=kind)


def test_new_code_continues_from_the_committed_offsets(client, workers, unique_name):
    source = create_stream(client, unique_name("in"))
    writer = source.writer(batch_size=10)
    writer.extend(range(100))
    writer.flush()

    def first(x):
        return ("v1", x)

    output = unique_name("out")
    v1 = register_function(client, first, output, [source.name])
    stream = open_stream(client, output)
    deadline = time.monotonic() + 60
    while stream.count() < 100:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def second(x):
        return ("v2", x)

    v2 = register_function(client, second, output, [source.name])
    wait_deployed(client, v2)
    writer.extend(range(100, 200))
    writer.close()
    result = list(wait_output(client, workers, output))

    assert v2.version != v1.version and v2.generation == v1.generation == 0
    assert result == [("v1", x) for x in range(100)] + [("v2", x) for x in range(100, 200)]


def test_replay_reprocesses_into_a_new_generation_and_keeps_the_old_one(client, workers, unique_name):
    source = fill(client, unique_name("in"), list(range(300)), batch_size=50)

    def double(x):
        return x * 2

    output = unique_name("out")
    register_function(client, double, output, [source.name])
    assert list(wait_output(client, workers, output)) == [x * 2 for x in range(300)]

    def triple(x):
        return x * 3

    spec = register_function(client, triple, output, [source.name], replay=True)
    assert spec.generation == 1
    assert list(wait_output(client, workers, output)) == [x * 3 for x in range(300)]
    assert list(open_stream(client, output, generation=0)) == [x * 2 for x in range(300)]


def test_deleting_a_function_removes_it_its_offsets_and_its_streams(client, workers, unique_name):
    from perper_lab import api
    from perper_lab.runtime.registry import FUNCTIONS_CACHE, offset_key
    from perper_lab.streams.stream import BATCHES_CACHE

    source = fill(client, unique_name("in"), list(range(50)))
    output = unique_name("out")
    register_function(client, lambda x: x, output, [source.name])
    wait_output(client, workers, output)

    with pytest.raises(PerperError, match="is read by the function"):
        api.delete(source.name, client)
    api.delete(output, client)

    assert client.cache(FUNCTIONS_CACHE).get(output) is None
    assert client.cache(STATE_CACHE).get(offset_key(output, 0, 0)) is None
    assert client.cache(BATCHES_CACHE).get(f"{output}/0/0") is None
    with pytest.raises(StreamNotFound):
        open_stream(client, output)
    api.delete(source.name, client)  # nobody reads it any more
    with pytest.raises(StreamNotFound):
        open_stream(client, source.name)


def test_outputs_that_cannot_be_stored_and_sys_exit_become_dead_letters(client, workers, unique_name):
    source = fill(client, unique_name("in"), list(range(20)), batch_size=5)

    def awkward(x):
        import sys
        import threading

        if x == 5:
            return threading.Lock()  # cannot be pickled, so cannot be stored
        if x == 7:
            sys.exit(3)  # must not end the worker
        return x

    output = unique_name("out")
    register_function(client, awkward, output, [source.name])
    result = list(wait_output(client, workers, output))
    errors = list(open_stream(client, output + ".errors"))

    assert result == [x for x in range(20) if x not in (5, 7)]
    assert sorted(record["error"] for record in errors) == ["SystemExit", "TypeError"]
    assert any("cannot be stored" in record["message"] for record in errors)
    assert len(workers.pids) == 1  # the worker is still alive


def test_a_generator_registered_as_a_map_runs_as_a_flat_map(client, workers, unique_name):
    source = fill(client, unique_name("in"), [1, 2])

    def twice(x):
        yield x
        yield x

    output = unique_name("out")
    spec = register_function(client, twice, output, [source.name])
    assert spec.kind == "flat_map"
    assert list(wait_output(client, workers, output)) == [1, 1, 2, 2]


def test_a_functions_output_cannot_be_written_by_anyone_else(client, workers, unique_name):
    from perper_lab.errors import StreamError

    source = fill(client, unique_name("in"), [1])
    output = unique_name("out")
    register_function(client, lambda x: x, output, [source.name])
    with pytest.raises(StreamError, match="is written by the function"):
        open_stream(client, output).append(2)
