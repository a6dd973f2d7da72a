"""Seed-style function apps: folders with ``function.json`` and ``__init__.py``, as in Perper's README."""

from perper_lab.apps.loader import AppFunction, load_app

__all__ = ["AppFunction", "load_app"]
