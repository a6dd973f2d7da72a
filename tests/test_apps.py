"""Seed-style function apps (function.json + __init__.py), run with `perper-lab run` on real workers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perper_lab.apps import load_app
from perper_lab.errors import AppDefinitionError
from perper_lab.streams import create_stream, open_stream

SEED_APP = Path(__file__).parents[1] / "examples" / "PerperFunctionApp"


def perper_lab_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perper_lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_seed_readme_app_runs_unchanged(fabric, client, workers, unique_name):
    source, output = unique_name("in"), unique_name("out")
    writer = create_stream(client, source).writer()
    writer.extend(range(1000))
    writer.close()

    result = perper_lab_cli("run", str(SEED_APP), "--input", source, "--output", output,
                            "--fabric", fabric.address, "--wait", "--timeout", "60")

    assert result.returncode == 0, result.stderr
    assert f"ProcessData: {source} -> {output}" in result.stdout
    assert f"{output}: closed with 1000 items" in result.stdout
    assert list(open_stream(client, output)) == [x * 10 for x in range(1000)]


def test_run_wait_reports_the_items_that_failed(fabric, client, workers, unique_name, tmp_path):
    source, output = unique_name("in"), unique_name("out")
    writer = create_stream(client, source).writer()
    writer.extend(range(100))
    writer.close()
    app = tmp_path / "Divide"
    shutil.copytree(SEED_APP, app)
    (app / "ProcessData" / "__init__.py").write_text("def main(context, data):\n    return 1 / (data - 5)\n")

    result = perper_lab_cli("run", str(app), "--input", source, "--output", output,
                            "--fabric", fabric.address, "--wait", "--timeout", "60")

    assert result.returncode == 0, result.stderr
    assert (f"{output}: closed with 99 items; 1 item(s) failed, see the dead-letter stream '{output}.errors'"
            in result.stdout)


def broken_app(tmp_path: Path, config: str | None, script: str | None = "def main(context, data):\n    return data\n"):
    folder = tmp_path / "App" / "ProcessData"
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "function.json").write_text(config)
    if script is not None:
        (folder / "__init__.py").write_text(script)
    return folder


SEED_BINDINGS = json.loads((SEED_APP / "ProcessData" / "function.json").read_text())["bindings"]


@pytest.mark.parametrize("config, message", [
    ('{"bindings": [', r"function.json: not valid JSON \(line 1"),
    ("{}", "field 'bindings' is missing"),
    ('{"bindings": {}}', "field 'bindings' is not a list"),
    (json.dumps({"bindings": [{"name": "context", "direction": "in"}]}), r"field 'bindings\[0\].type' is missing"),
    (json.dumps({"bindings": SEED_BINDINGS[:2]}),
     r"needs exactly one stream binding with direction out \(named \$return\), found 0"),
    (json.dumps({"bindings": SEED_BINDINGS[:2] + [{**SEED_BINDINGS[2], "name": "result"}]}),
     "out stream must be named '\\$return'"),
    (json.dumps({"bindings": [{"name": "req", "type": "httpTrigger", "direction": "in"}]}),
     r"bindings\[0\]' has type 'httpTrigger'"),
    (json.dumps({"scriptFile": "run.py", "bindings": SEED_BINDINGS}), r"run.py: missing .*field 'scriptFile'"),
])
def test_a_malformed_function_json_names_the_file_and_the_field(tmp_path, config, message):
    folder = broken_app(tmp_path, config)
    with pytest.raises(AppDefinitionError, match=message) as error:
        load_app(folder.parent)
    assert str(folder) in str(error.value)


def test_a_missing_init_py_names_the_file(tmp_path):
    folder = broken_app(tmp_path, json.dumps({"bindings": SEED_BINDINGS}), script=None)
    with pytest.raises(AppDefinitionError, match=r"ProcessData/__init__.py: missing"):
        load_app(folder)


def test_main_must_take_the_binding_names(tmp_path):
    folder = broken_app(tmp_path, json.dumps({"bindings": SEED_BINDINGS}), script="def main(item):\n    return item\n")
    with pytest.raises(AppDefinitionError, match=r"main\(item\) must take \(context, data\)"):
        load_app(folder)


def test_the_cli_reports_a_broken_app_in_one_line(tmp_path, fabric):
    folder = broken_app(tmp_path, "{}")
    result = perper_lab_cli("run", str(folder.parent), "--input", "x", "--fabric", fabric.address)
    assert result.returncode == 1
    assert result.stderr.strip() == f"perper-lab: error: {folder / 'function.json'}: field 'bindings' is missing"


def test_an_app_folder_of_two_functions_with_one_output_is_refused(tmp_path, fabric):
    app = tmp_path / "App"
    for name in ("One", "Two"):
        shutil.copytree(SEED_APP / "ProcessData", app / name)
    result = perper_lab_cli("run", str(app), "--input", "x", "--output", "y", "--fabric", fabric.address)
    assert result.returncode == 1 and "has 2 functions (One, Two)" in result.stderr
