"""perper_lab: a notebook-first, horizontally scalable stream-processing lab on Apache Ignite.

In a notebook: ``%load_ext perper_lab``, then ``%%perper_stream OUTPUT --input IN`` cells.
From Python: :func:`connect`, :func:`from_dataframe`, :func:`register`, :func:`stream`, :func:`status`.
"""

from perper_lab.api import (
    connect,
    current_fabric,
    delete,
    disconnect,
    from_dataframe,
    from_iterable,
    register,
    run_app,
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
           "Stream", "StreamNotFound", "connect", "current_fabric", "dashboard", "delete", "disconnect",
           "from_dataframe", "from_iterable", "load_ipython_extension", "register", "run_app", "show", "status",
           "stream", "unload_ipython_extension", "workers"]


def load_ipython_extension(ipython) -> None:  # noqa: ANN001 - IPython's InteractiveShell
    from perper_lab.notebook.extension import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:  # noqa: ANN001
    from perper_lab.notebook.extension import unload

    unload(ipython)


def show(name: str):  # noqa: ANN201 - returns an ipywidgets widget
    """A live view of stream ``name`` (in a notebook)."""
    from perper_lab.notebook.view import StreamView

    shown = stream(name)
    errors = stream(name + ".errors") if shown.producer else None
    return StreamView(shown, errors=errors)


def dashboard():  # noqa: ANN201 - returns an ipywidgets widget
    """A live widget listing every stream, function and worker of the fabric."""
    from perper_lab.notebook.dashboard import Dashboard

    return Dashboard(current_fabric())


def workers():  # noqa: ANN201 - returns the embedded fabric's worker handle
    """The local workers of the embedded fabric: ``.scale(n)``, ``.kill(i)`` (SIGKILL; a replacement
    starts), ``.pids``."""
    from perper_lab.notebook.extension import current_session

    session = current_session()
    if session is None or session.embedded is None:
        raise PerperError("there is no local worker pool: it comes with the embedded fabric of %load_ext "
                          "perper_lab; with PERPER_FABRIC set, start workers with `perper-lab worker`")
    return session.embedded


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab extension (the "Perper" sidebar), built from ``extension/``."""
    return [{"src": "labextension", "dest": "perper-lab"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The jupyter_server extension the sidebar reads (``perper_lab.server``)."""
    return [{"module": "perper_lab.server"}]
