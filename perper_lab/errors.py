"""One error tree for perper_lab.

Every error a user can meet derives from :class:`PerperError` and says what to do next. pyignite's
exceptions never escape: :mod:`perper_lab.fabric.client` is the one place that translates them.
"""

from __future__ import annotations


class PerperError(Exception):
    """Base class of every perper_lab error."""


class FabricError(PerperError):
    """Something is wrong with the fabric (the Ignite cluster) or with reaching it."""


class FabricUnavailable(FabricError):
    """No fabric node answered at the configured addresses."""


class FabricTimeout(FabricError):
    """A fabric call did not finish within its timeout."""


class FabricStartError(FabricError):
    """A local fabric node could not be started (Java missing, build failed, port in use, not ready)."""


class StreamError(PerperError):
    """A stream operation was given something it cannot work with."""


class StreamNotFound(StreamError):
    """The named stream does not exist in the fabric."""


class StreamClosed(StreamError):
    """An append was attempted on a stream (partition) that is already closed."""


class FunctionError(PerperError):
    """A stream function could not be registered or run."""


class FunctionRejected(FunctionError):
    """The function cannot be registered (cannot be shipped to workers, bad arguments, ...)."""


class FunctionNotFound(FunctionError):
    """The named function is not registered in the fabric."""


class AppDefinitionError(FunctionError):
    """A seed-style function app folder is malformed (names the file and the field)."""
