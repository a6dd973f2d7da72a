"""Streams against a real fabric node: ordering, exact round trips, end of stream, frames, partitions."""

from __future__ import annotations

import math
import threading
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from perper_lab.errors import PerperError, StreamClosed, StreamError, StreamNotFound
from perper_lab.fabric.client import FabricClient
from perper_lab.streams import create_stream, from_iterable, open_stream


def test_round_trip_of_100k_items_keeps_every_item_in_order(client, unique_name):
    stream = create_stream(client, unique_name())
    expected = [(i, f"item-{i}") if i % 2 else i * 3 for i in range(100_000)]
    writer = stream.writer(batch_size=1000)
    writer.extend(expected)
    writer.close()

    got = list(open_stream(client, stream.name))

    assert stream.count() == len(expected)
    assert len(got) == len(expected)
    for index, (item, want) in enumerate(zip(got, expected, strict=True)):
        assert item == want and type(item) is type(want), f"item {index}: {item!r} != {want!r}"


def test_items_of_many_python_types_round_trip_exactly(client, unique_name):
    nested = {"a": [1, 2, {"b": (3, "four")}], "c": {"d": None, "e": [b"\x00", 1.5]}, 7: "int key"}
    values = [
        0, -1, 42, 2**100, -(2**70),
        0.1, -0.0, 1e308, float("inf"), float("-inf"), float("nan"),
        "", "plain", "héllo wörld", "日本語", "emoji 🎉", "\x00 nul and \n newline",
        b"", b"\x00\x01\xff", bytes(range(256)),
        None, True, False,
        (), (1,), (1, "two", (3.0, None)),
        [], [1, [2, [3, []]]], [(1, 2), (3, 4)],
        {}, nested,
        datetime(2024, 2, 29, 23, 59, 59, 123456),
        datetime(2024, 2, 29, 12, 0, tzinfo=UTC),
        datetime(2024, 2, 29, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 7, 1, 9, 30, tzinfo=ZoneInfo("Europe/Paris")),
        date(1999, 12, 31),
        Decimal("1.10"), Decimal("-0.000000000000000000000000001"), Decimal("123456789012345678901234567890.5"),
        {1, 2, 3}, frozenset({"x"}), complex(1, -2),
    ]
    stream = from_iterable(values, unique_name(), fabric=client, batch_size=7)
    stream.wait_closed(timeout=30)

    got = list(open_stream(client, stream.name))

    assert len(got) == len(values)
    for item, want in zip(got, values, strict=True):
        # repr tells tuple from list, bool from int, 1.10 from 1.1, -0.0 from 0.0 and shows tzinfo.
        assert type(item) is type(want), f"{item!r} came back as {type(item).__name__}, not {type(want).__name__}"
        assert repr(item) == repr(want)
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(item)
        else:
            assert item == want
        if isinstance(want, datetime):
            assert item.tzinfo == want.tzinfo and item.utcoffset() == want.utcoffset()
    big = got[values.index(2**100)]
    assert big == 2**100 and isinstance(big, int)
    assert got[values.index(nested)]["a"][2]["b"] == (3, "four")


def test_reader_following_the_stream_stops_after_close(fabric, client, unique_name):
    stream = create_stream(client, unique_name())
    stream.append(*range(10))
    got: list[int] = []
    first_batch = threading.Event()
    failure: list[BaseException] = []

    def follow() -> None:
        try:
            # A reader in another thread has its own connection, as in a real notebook.
            with FabricClient(fabric.address) as own:
                for _, items in open_stream(own, stream.name).read_batches(0, follow=True, timeout=30):
                    got.extend(items)
                    first_batch.set()
        except BaseException as exc:
            failure.append(exc)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert first_batch.wait(30), "the following reader did not see the first batch"
    stream.append(*range(10, 20))
    stream.append(*range(20, 25))
    stream.close()
    reader.join(30)

    assert not reader.is_alive(), "a reader with follow=True kept waiting after the stream was closed"
    assert not failure, failure
    assert got == list(range(25))
    assert stream.closed


def test_appending_after_close_raises_stream_closed(client, unique_name):
    stream = create_stream(client, unique_name())
    stream.append("a", "b")
    stream.close()

    with pytest.raises(StreamClosed, match=stream.name):
        stream.append("c")
    writer = stream.writer()
    with pytest.raises(StreamClosed):
        writer.append("d")
    assert list(stream) == ["a", "b"]
    assert stream.count() == 2


def test_writer_append_after_its_own_close_raises_stream_closed(client, unique_name):
    stream = create_stream(client, unique_name(), partitions=2)
    writer = stream.writer()
    writer.extend([1, 2, 3])
    writer.close()

    with pytest.raises(StreamClosed, match="is closed"):
        writer.append(4)
    assert sorted(stream) == [1, 2, 3]


def test_wait_closed_on_an_open_stream_raises_timeout_with_a_helpful_message(client, unique_name):
    stream = create_stream(client, unique_name(), partitions=2)
    stream.append(1, 2, 3)

    with pytest.raises(TimeoutError) as caught:
        stream.wait_closed(timeout=0.3)

    message = str(caught.value)
    assert stream.name in message
    assert "not closed within 0.3s" in message
    assert "3 items so far" in message
    assert "open partitions: [0, 1]" in message
    stream.close()
    stream.wait_closed(timeout=5)  # returns once closed


def test_to_pandas_head_and_tail_return_the_right_rows_with_dict_keys_as_columns(client, unique_name):
    stream = create_stream(client, unique_name())
    rows = [{"i": i, "square": i * i, "name": f"n{i}"} for i in range(25)]
    writer = stream.writer(batch_size=10)  # batches of 10, 10 and 5: slices cross batch boundaries
    writer.extend(rows)
    writer.close()

    frame = stream.to_pandas()
    assert list(frame.columns) == ["i", "square", "name"]
    assert frame.to_dict("records") == rows
    assert stream.to_pandas(5, 15)["i"].tolist() == list(range(5, 15))
    assert stream.to_pandas(12)["i"].tolist() == list(range(12, 25))
    assert stream.head(3).to_dict("records") == rows[:3]
    assert stream.tail(7).to_dict("records") == rows[-7:]
    assert stream.tail(100).to_dict("records") == rows
    assert stream.head(0).empty

    plain = create_stream(client, unique_name("plain"))
    plain.append(10, 20, 30)
    assert list(plain.head(2).columns) == ["value"]
    assert plain.head(2)["value"].tolist() == [10, 20]
    assert plain.tail(1)["value"].tolist() == [30]


@pytest.mark.parametrize("key", ["user", lambda item: item["user"]], ids=["field", "function"])
def test_partitions_with_key_routing_keep_per_key_order(client, unique_name, key):
    stream = create_stream(client, unique_name(), partitions=4)
    items = [{"user": f"u{i % 13}", "seq": i} for i in range(3000)]
    writer = stream.writer(batch_size=37, key=key)
    writer.extend(items)
    writer.close()

    partition_of: dict[str, int] = {}
    per_key: dict[str, list[int]] = {}
    used = set()
    for partition in range(stream.partitions):
        for _, batch in stream.read_batches(partition):
            for item in batch:
                used.add(partition)
                assert partition_of.setdefault(item["user"], partition) == partition, \
                    f"key {item['user']} is in two partitions"
                per_key.setdefault(item["user"], []).append(item["seq"])

    assert len(used) > 1, "key routing put every key in one partition"
    for user, seqs in per_key.items():
        assert seqs == [i for i in range(3000) if f"u{i % 13}" == user], f"key {user} lost its order"
    assert sorted(item["seq"] for item in stream) == list(range(3000))
    assert stream.closed


@pytest.mark.parametrize("name", ["", "has space", "1starts_with_digit", "a/b", "x" * 201, "héllo", 42, None])
def test_invalid_stream_names_raise_stream_error(client, name):
    with pytest.raises(StreamError, match="invalid stream name"):
        create_stream(client, name)
    with pytest.raises(StreamError, match="invalid stream name"):
        open_stream(client, name)


def test_bad_partition_counts_raise_stream_error(client, unique_name):
    for partitions in (0, -1, 1.5):
        with pytest.raises(StreamError, match="at least one partition"):
            create_stream(client, unique_name(), partitions)
    create_stream(client, unique_name("two"), 2)
    with pytest.raises(StreamError, match="already exists with 2 partition"):
        create_stream(client, unique_name("two"), 3)


def test_opening_a_missing_stream_raises_stream_not_found_naming_existing_streams(client, unique_name):
    # Upper case sorts before the t_... names of the other tests: the message lists the first 20 names.
    existing = "A" + unique_name("existing")
    create_stream(client, existing)
    missing = unique_name("missing")

    with pytest.raises(StreamNotFound) as caught:
        open_stream(client, missing)

    message = str(caught.value)
    assert repr(missing) in message
    assert "existing streams:" in message
    assert existing in message
    assert client.address in message


def test_a_batch_too_large_for_one_entry_is_split_and_a_huge_item_refused(client, unique_name):
    from perper_lab.errors import StreamError
    from perper_lab.streams.stream import MAX_BATCH_BYTES

    stream = create_stream(client, unique_name("big"))
    chunks = [bytes([i]) * (MAX_BATCH_BYTES // 4) for i in range(6)]  # distinct: pickle would share equal ones
    writer = stream.writer()
    writer.extend(chunks)  # 1.5 times the limit: two or more batches
    writer.close()
    assert stream.heads()[0].batches >= 2
    assert list(stream) == chunks
    with pytest.raises(StreamError, match="larger than the"):
        create_stream(client, unique_name("huge")).append(b"x" * (MAX_BATCH_BYTES + 1))


def test_a_failing_replay_says_so_even_if_nobody_waits_on_it(client, unique_name, capsys):
    def rows():
        yield from range(10)
        raise OSError("the source file vanished")

    name = unique_name()
    replay = from_iterable(rows(), name, fabric=client, batch_size=4)
    with pytest.raises(PerperError, match="the source file vanished"):
        replay.wait_closed(timeout=30)

    said = capsys.readouterr().err
    assert f"replaying into {name!r} failed: the source file vanished" in said
    assert "perper_lab.delete(name)" in said  # what to do about it
    assert not open_stream(client, name).closed  # a truncated replay is never passed off as complete


def test_routing_by_a_field_that_an_item_lacks_names_the_key(client, unique_name):
    writer = create_stream(client, unique_name(), partitions=2).writer(key="carrier")
    with pytest.raises(StreamError, match="cannot route by key 'carrier': the item 3 has no field"):
        writer.append(3)


def test_a_script_that_exits_right_after_a_replay_still_writes_and_closes_the_stream(fabric, client, unique_name):
    import subprocess
    import sys

    name = unique_name()
    script = ("import perper_lab\n"
              f"perper_lab.connect({fabric.address!r})\n"
              f"perper_lab.from_iterable(range(100_000), {name!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert f"waiting for the replay into {name!r} to finish" in done.stderr
    stream = open_stream(client, name)
    assert stream.closed
    assert list(stream) == list(range(100_000))
