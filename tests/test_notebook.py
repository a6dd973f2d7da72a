"""The %%perper_stream magic and the live StreamView, in a real IPython shell against the real fabric."""

from __future__ import annotations

import re
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import perper_lab
from perper_lab.notebook import extension
from perper_lab.notebook.view import StreamView


@pytest.fixture
def shell(fabric, workers, monkeypatch):
    monkeypatch.setenv("PERPER_FABRIC", fabric.address)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "perper_lab")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "perper_lab")
        InteractiveShell.clear_instance()


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_load_ext_connects_to_perper_fabric(shell, fabric):
    assert extension.current_session().address == fabric.address
    assert not extension.current_session().embedded
    assert fabric.address in shell.run_line_magic("perper", "fabric")


def test_cell_registers_its_function_and_the_view_follows_the_output(shell, unique_name):
    source, output = unique_name("in"), unique_name("out")
    perper_lab.from_iterable(range(5000), source).wait_closed(30)
    view = shell.run_cell_magic("perper_stream", f"{output} --input {source}",
                                "def tenfold(x):\n    return x * 10 if x % 2 else None\n")
    assert isinstance(view, StreamView)
    assert "tenfold" in shell.user_ns  # the function stays usable in later cells
    perper_lab.stream(output).wait_closed(60)
    assert list(perper_lab.stream(output)) == [x * 10 for x in range(5000) if x % 2]
    wait_until(lambda: not view.running)
    assert "2,500" in view.counters.value and "closed" in view.counters.value
    assert "50" in view.table.outputs[0]["data"]["text/plain"]  # latest rows are shown


def test_view_of_a_function_shows_its_input_rate_lag_instances_and_state(shell, unique_name):
    source, output = unique_name("in"), unique_name("out")
    perper_lab.from_iterable(range(4000), source, rate=2000)
    view = shell.run_cell_magic("perper_stream", f"{output} --input {source}", "def same(x):\n    return x\n")
    wait_until(lambda: "instances: <b>1 of 1</b>" in view.counters.value, timeout=30)
    perper_lab.stream(output).wait_closed(60)
    wait_until(lambda: not view.running)

    assert max(view.source.data["input_rate"]) > 0  # the input line of the chart moved while the input grew
    assert "lag: <b>0</b>" in view.counters.value
    assert "function: <b>finished</b>" in view.counters.value
    assert "items: <b>4,000</b>" in view.counters.value


def test_the_view_of_a_function_that_failed_says_so_and_stops_following(shell, unique_name):
    source, output = unique_name("in"), unique_name("out")
    perper_lab.from_iterable(range(100), source).wait_closed(30)
    view = shell.run_cell_magic("perper_stream", f"{output} --input {source} --on-error stop",
                                "def refuse(x):\n    raise ValueError(f'no {x}')\n")
    wait_until(lambda: not view.running, timeout=30)
    assert "<i>failed</i>" in view.title.value
    assert "function: <b>failed</b>" in view.counters.value


def test_generator_cell_becomes_a_flat_map(shell, unique_name):
    source, output = unique_name("in"), unique_name("out")
    perper_lab.from_iterable([1, 2, 3], source).wait_closed(30)
    shell.run_cell_magic("perper_stream", f"{output} --input {source}",
                         "def repeat(x):\n    for _ in range(x):\n        yield x\n")
    perper_lab.stream(output).wait_closed(60)
    assert list(perper_lab.stream(output)) == [1, 2, 2, 3, 3, 3]


def test_view_counter_increases_while_the_stream_grows(shell, unique_name):
    name = unique_name("paced")
    perper_lab.from_iterable(range(3000), name, rate=1500)
    view = perper_lab.show(name)
    try:
        wait_until(lambda: view.updates >= 1)
        first = view.source.data["rate"][:]
        wait_until(lambda: "3,000" in view.counters.value, timeout=30)
        assert view.updates > 1 and len(view.source.data["rate"]) > len(first)
    finally:
        view.close()


@pytest.mark.parametrize("cell, found", [
    ("x = 1\n", "found 0 (none)"),
    ("def a(x):\n    return x\n\ndef b(x):\n    return x\n", "found 2 (a, b)"),
])
def test_cell_must_define_exactly_one_function(shell, unique_name, cell, found):
    with pytest.raises(UsageError, match=rf"exactly one function; {re.escape(found)}"):
        shell.run_cell_magic("perper_stream", f"{unique_name('out')} --input whatever", cell)


def test_unknown_input_stream_is_a_one_line_usage_error(shell, unique_name):
    with pytest.raises(UsageError, match=r"no stream named 'nope_never_written'"):
        shell.run_cell_magic("perper_stream", f"{unique_name('out')} --input nope_never_written",
                             "def f(x):\n    return x\n")


def test_unpicklable_function_is_a_usage_error(shell, unique_name):
    source = unique_name("in")
    perper_lab.from_iterable([1], source).wait_closed(30)
    shell.run_cell("import threading\nguard = threading.Lock()\n")
    with pytest.raises(UsageError, match="cannot be shipped to the workers"):
        shell.run_cell_magic("perper_stream", f"{unique_name('out')} --input {source}",
                             "def f(x):\n    with guard:\n        return x\n")


def test_unknown_option_and_missing_input_are_usage_errors(shell):
    with pytest.raises(UsageError):
        shell.run_cell_magic("perper_stream", "out --colour red --input x", "def f(x):\n    return x\n")
    with pytest.raises(UsageError):
        shell.run_cell_magic("perper_stream", "out", "def f(x):\n    return x\n")


def test_unknown_perper_command_lists_the_commands(shell):
    with pytest.raises(UsageError, match=re.escape("status | stop OUTPUT | delete STREAM | workers N")):
        shell.run_line_magic("perper", "frobnicate")


@pytest.mark.parametrize("line, usage", [("stop", "stop OUTPUT"), ("status extra", "status"),
                                         ("workers", "workers N"), ("show a b", "show STREAM")])
def test_a_perper_command_with_wrong_arguments_shows_its_own_usage(shell, line, usage):
    with pytest.raises(UsageError, match=re.escape(f"%perper {line}: use %perper {usage}")):
        shell.run_line_magic("perper", line)


def test_a_cell_with_a_syntax_error_says_where(shell, unique_name):
    with pytest.raises(UsageError, match="syntax error on line 1: expected ':'"):
        shell.run_cell_magic("perper_stream", f"{unique_name('out')} --input x", "def f(x)\n    return x\n")


@pytest.mark.parametrize("options, says", [
    ("--input x --source", "--source and --input exclude each other"),
    ("--input x --partitions 3", "--partitions applies to a --source only"),
])
def test_contradicting_magic_options_name_the_conflict(shell, unique_name, options, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        shell.run_cell_magic("perper_stream", f"{unique_name('out')} {options}", "def f(x):\n    return x\n")


def test_a_perper_error_in_any_cell_is_shown_in_one_line(shell, capsys):
    result = shell.run_cell("import perper_lab\nperper_lab.stream('no_such_stream_anywhere')")
    shown = capsys.readouterr()
    assert not result.success
    assert "StreamNotFound: no stream named 'no_such_stream_anywhere'" in shown.out + shown.err
    assert "Traceback" not in shown.out + shown.err and "site-packages" not in shown.out + shown.err




def test_load_ext_with_a_fabric_that_is_down_is_a_one_line_error(monkeypatch):
    from perper_lab.fabric.launcher import free_port_offset

    monkeypatch.setenv("PERPER_FABRIC", f"127.0.0.1:{10800 + free_port_offset()}")
    ip = InteractiveShell.instance()
    try:
        with pytest.raises(UsageError, match="no fabric node answers at 127.0.0.1"):
            extension.load(ip)
        assert extension.current_session() is None
    finally:
        InteractiveShell.clear_instance()


def test_embedded_fabric_without_java_says_so_in_one_line(monkeypatch, tmp_path):
    from perper_lab.embedded import EmbeddedFabric

    monkeypatch.setenv("PATH", "/nonexistent")  # no java, no mvn
    monkeypatch.delenv("JAVA_HOME", raising=False)
    embedded = EmbeddedFabric(tmp_path / "embedded")
    with pytest.raises(perper_lab.PerperError, match="did not start: Java was not found"):
        embedded.attach(timeout=60)


def test_a_view_whose_fabric_goes_down_says_so_and_stops_claiming_live(tmp_path):
    from perper_lab.fabric.client import FabricClient
    from perper_lab.fabric.launcher import start_on_free_ports
    from perper_lab.streams import create_stream

    local = start_on_free_ports(tmp_path / "fabric")
    try:
        with FabricClient(local.address, timeout=5.0) as own:
            stream = create_stream(own, "watched")
            stream.append(1, 2, 3)
            view = StreamView(stream)
            wait_until(lambda: "items: <b>3</b>" in view.counters.value)
            local.stop()
            wait_until(lambda: not view.running, timeout=60)
    finally:
        local.stop()
    assert "view stopped: " in view.title.value
    assert view.counters.value.startswith("<i>as last seen:</i>")
    assert "live" not in view.counters.value
