"""Load a seed-style function app: one folder per function with ``function.json`` and a script.

``function.json`` must bind a ``streamTrigger`` (in, the context), a ``stream`` (in, the item) and
``$return`` as a ``stream`` (out). Every mistake is reported with the file and the field it is in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from perper_lab.errors import AppDefinitionError
from perper_lab.runtime.seed import provide_seed_modules


@dataclass(frozen=True)
class AppFunction:
    name: str
    folder: Path
    main: Callable[..., Any]
    source: str


def load_app(path: Path | str) -> list[AppFunction]:
    """The functions of an app folder (each subfolder with a function.json), or of one function folder."""
    path = Path(path)
    if not path.is_dir():
        raise AppDefinitionError(f"{path}: not a folder (expected a function app or a function folder)")
    if (path / "function.json").exists():
        return [load_function(path)]
    folders = sorted(child for child in path.iterdir() if (child / "function.json").is_file())
    if not folders:
        raise AppDefinitionError(f"{path}: no function.json in it or in any subfolder "
                                 "(a function folder holds function.json and __init__.py)")
    return [load_function(folder) for folder in folders]


def load_function(folder: Path) -> AppFunction:
    config_file = folder / "function.json"
    config = _read_config(config_file)
    trigger, data = _check_bindings(config_file, config)
    script_name = config.get("scriptFile", "__init__.py")
    if not isinstance(script_name, str):
        raise AppDefinitionError(f"{config_file}: field 'scriptFile' must be a file name")
    script = folder / script_name
    if not script.is_file():
        raise AppDefinitionError(f"{script}: missing (the script named by field 'scriptFile' of {config_file})")
    entry_point = config.get("entryPoint", "main")
    module = _load_module(script)
    main = getattr(module, entry_point, None)
    if not callable(main):
        raise AppDefinitionError(f"{script}: defines no function {entry_point!r} "
                                 f"(field 'entryPoint' of {config_file})")
    parameters = list(inspect.signature(main).parameters)
    if parameters[:2] != [trigger, data]:
        raise AppDefinitionError(
            f"{script}: {entry_point}({', '.join(parameters)}) must take ({trigger}, {data}), the names of "
            f"the streamTrigger and stream bindings in {config_file}"
        )
    return AppFunction(folder.name, folder, main, script.read_text())


def _read_config(config_file: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise AppDefinitionError(f"{config_file}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                                 f"{exc.msg})") from None
    if not isinstance(config, dict):
        raise AppDefinitionError(f"{config_file}: must hold a JSON object with a 'bindings' field")
    return config


def _check_bindings(config_file: Path, config: dict[str, Any]) -> tuple[str, str]:
    """The names of the trigger (context) and data bindings; every other shape is an error."""
    bindings = config.get("bindings")
    if not isinstance(bindings, list):
        problem = "missing" if bindings is None else "not a list"
        raise AppDefinitionError(f"{config_file}: field 'bindings' is {problem}")
    found: dict[tuple[str, str], list[str]] = {}
    for index, binding in enumerate(bindings):
        for field in ("name", "type", "direction"):
            if not isinstance(binding, dict) or not isinstance(binding.get(field), str):
                raise AppDefinitionError(f"{config_file}: field 'bindings[{index}].{field}' is missing")
        key = (binding["type"], binding["direction"])
        if key not in (("streamTrigger", "in"), ("stream", "in"), ("stream", "out")):
            raise AppDefinitionError(
                f"{config_file}: field 'bindings[{index}]' has type {binding['type']!r} and direction "
                f"{binding['direction']!r}; supported: streamTrigger/in, stream/in, stream/out"
            )
        found.setdefault(key, []).append(binding["name"])
    for key, what in ((("streamTrigger", "in"), "streamTrigger binding with direction in"),
                      (("stream", "in"), "stream binding with direction in (the item)"),
                      (("stream", "out"), "stream binding with direction out (named $return)")):
        if len(found.get(key, [])) != 1:
            raise AppDefinitionError(f"{config_file}: field 'bindings' needs exactly one {what}, "
                                     f"found {len(found.get(key, []))}")
    if found[("stream", "out")] != ["$return"]:
        raise AppDefinitionError(f"{config_file}: field 'bindings' out stream must be named '$return', "
                                 f"not {found[('stream', 'out')][0]!r}")
    return found[("streamTrigger", "in")][0], found[("stream", "in")][0]


def _load_module(script: Path) -> types.ModuleType:
    provide_seed_modules()
    name = "perper_app_" + hashlib.sha1(str(script.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise AppDefinitionError(f"{script}: syntax error on line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        raise AppDefinitionError(f"{script}: failed to import: {type(exc).__name__}: {exc}") from None
    # The worker cannot import this file by name: ship its functions by value.
    cloudpickle.register_pickle_by_value(module)
    return module
