"""perper_lab: a notebook-first, horizontally scalable stream-processing lab on Apache Ignite.

In a notebook: ``%load_ext perper_lab``, then ``%%perper_stream OUTPUT --input IN`` cells.
From Python: :func:`connect`, :func:`from_dataframe`, :func:`register`, :func:`stream`, :func:`status`.
"""

from perper_lab.api import (
    connect,
    disconnect,
    fabric,
    from_dataframe,
    from_iterable,
    register,
    status,
    stream,
)
from perper_lab.errors import (
    FabricError,
    FabricStartError,
    FabricUnavailable,
    FunctionRejected,
    PerperError,
    StreamNotFound,
)
from perper_lab.streams import Stream

__version__ = "0.1.0"

__all__ = ["FabricError", "FabricStartError", "FabricUnavailable", "FunctionRejected", "PerperError",
           "Stream", "StreamNotFound", "connect", "disconnect", "fabric", "from_dataframe", "from_iterable",
           "load_ipython_extension", "register", "show", "status", "stream", "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:  # noqa: ANN001 - IPython's InteractiveShell
    from perper_lab.notebook.extension import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:  # noqa: ANN001
    from perper_lab.notebook.extension import unload

    unload(ipython)


def show(name: str):  # noqa: ANN201 - returns an ipywidgets widget
    """A live view of stream ``name`` (in a notebook)."""
    from perper_lab.notebook.view import StreamView

    return StreamView(stream(name))
