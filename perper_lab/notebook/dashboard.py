"""``perper_lab.dashboard()``: one live widget listing every stream and function of the fabric."""

from __future__ import annotations

import threading
import time

import ipywidgets as widgets
import pandas as pd

from perper_lab import api
from perper_lab.errors import PerperError
from perper_lab.fabric.client import FabricClient


class Dashboard(widgets.VBox):
    """Streams (items, items/s, closed), functions (state, workers, lag, errors) and workers, updated
    ``rate`` times a second from a background thread with its own fabric connection."""

    def __init__(self, fabric: FabricClient, rate: float = 1.0) -> None:
        self.fabric = fabric
        self.period = 1.0 / rate
        self.streams = widgets.HTML("<i>loading…</i>")
        self.functions = widgets.HTML("")
        self.workers = widgets.HTML("")
        super().__init__([widgets.HTML("<b>streams</b>"), self.streams, widgets.HTML("<b>functions</b>"),
                          self.functions, widgets.HTML("<b>workers</b>"), self.workers])
        self.updates = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="perper-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        super().close()

    def _pump(self) -> None:
        previous: dict[str, tuple[float, int]] = {}
        try:
            with FabricClient(self.fabric.address, timeout=self.fabric.timeout) as fabric:
                while not self._stop.is_set():
                    tables = api.status(fabric)
                    now = time.monotonic()
                    streams = tables["streams"]
                    rates = []
                    for name, items in zip(streams["stream"], streams["items"], strict=True):
                        then, before = previous.get(name, (now, items))
                        rates.append(round((items - before) / (now - then)) if now > then else 0)
                        previous[name] = (now, items)
                    streams.insert(3, "items/s", rates)
                    self.streams.value = _html(streams)
                    self.functions.value = _html(tables["functions"].drop(columns=["version"]))
                    self.workers.value = _html(tables["workers"])
                    self.updates += 1
                    self._stop.wait(self.period)
        except PerperError as exc:
            self.streams.value = f"<i>dashboard stopped: {exc}</i>"


def _html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False) if len(frame) else "<i>none</i>"
