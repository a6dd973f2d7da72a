"""The names a seed-style function imports, for code written against Perper's Python binding.

The seed's example says ``import azure.functions as func`` and ``import perper.functions as perper`` and
annotates ``context: perper.StreamContex``. Where those packages are not installed,
:func:`provide_seed_modules` makes both names resolve to this module, so such code runs unchanged,
in the notebook and in the workers alike.
"""

from __future__ import annotations

import importlib
import sys
import types

from perper_lab.runtime.execution import StreamContext

StreamContex = StreamContext  # the seed README's spelling

__all__ = ["StreamContex", "StreamContext", "provide_seed_modules"]


def provide_seed_modules() -> None:
    for package, name in (("azure", "azure.functions"), ("perper", "perper.functions")):
        try:
            importlib.import_module(name)
        except ImportError:
            parent = sys.modules.get(package) or types.ModuleType(package)
            parent.__path__ = []
            parent.functions = sys.modules[__name__]
            sys.modules[package] = parent
            sys.modules[name] = sys.modules[__name__]
