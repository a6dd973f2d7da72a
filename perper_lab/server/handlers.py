"""``GET {base_url}/perper-lab/fabrics``: the JSON the JupyterLab "Perper" sidebar polls."""

from __future__ import annotations

import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from perper_lab.server.fabrics import FabricMonitor

MONITOR = "perper_lab_monitor"


class FabricsHandler(APIHandler):
    """``{"fabrics": [{"address", "sources", "error", "streams", "functions", "workers"}], "checked_at"}``."""

    @tornado.web.authenticated
    async def get(self) -> None:
        monitor: FabricMonitor = self.settings[MONITOR]
        kernel_manager = self.settings.get("kernel_manager")
        kernel_ids = set(kernel_manager.list_kernel_ids()) if kernel_manager is not None else set()
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(await monitor.snapshot(kernel_ids)))


def setup_handlers(web_app: tornado.web.Application) -> FabricMonitor:
    monitor = FabricMonitor()
    web_app.settings[MONITOR] = monitor
    route = url_path_join(web_app.settings["base_url"], "perper-lab", "fabrics")
    web_app.add_handlers(".*$", [(route, FabricsHandler)])
    return monitor
