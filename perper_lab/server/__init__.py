"""The jupyter_server extension of perper_lab: a REST endpoint listing the fabrics this server sees.

Enabled by ``jupyter-config/server-config/perper_lab.json`` (installed with the package); the
JupyterLab sidebar of ``extension/`` polls ``GET {base_url}/perper-lab/fabrics``.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "perper_lab.server"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from perper_lab.server.handlers import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("perper_lab: GET %sperper-lab/fabrics lists the fabrics this server sees",
                        server_app.base_url)
