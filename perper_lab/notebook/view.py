"""The live view of a stream: throughput chart, counters and the latest items as a table.

One background "pump" thread per view reads the stream's counters from the fabric and updates the
widgets. Widget messages sent from a thread reach the browser even while another cell is busy (an
asyncio task on the kernel loop would be held until that cell ends). The pump never prints: thread
output would land in whichever cell runs next.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as widgets
import pandas as pd
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure
from jupyter_bokeh.widgets import BokehModel

from perper_lab import api
from perper_lab.errors import PerperError
from perper_lab.fabric.client import FabricClient
from perper_lab.streams import Stream

CHART_SECONDS = 60
FAST_PERIOD = 0.1  # seconds between refreshes until the stream's first items show
_bokehjs_loaded = False


def load_bokehjs() -> None:
    """jupyter_bokeh's chart widget needs BokehJS in the page: load it inline (offline), once per kernel."""
    global _bokehjs_loaded
    from IPython import get_ipython

    if _bokehjs_loaded or get_ipython() is None:
        return
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    output_notebook(INLINE, hide_banner=True)
    _bokehjs_loaded = True


class StreamView(widgets.VBox):
    """A live view of ``stream``; updates ``rate`` times a second until the stream is closed.

    ``errors`` is the function's dead-letter stream, if the stream is a function's output.
    """

    def __init__(self, stream: Stream, *, errors: Stream | None = None, rows: int = 10, rate: float = 2.0) -> None:
        load_bokehjs()
        self.stream = stream
        self.errors = errors
        self.rows = rows
        self.period = 1.0 / rate
        self.title = widgets.HTML(f"<b>{html.escape(stream.name)}</b> &nbsp;<i>starting…</i>")
        self.counters = widgets.HTML("")
        self.table = widgets.Output()
        self.last_error = widgets.Output()
        self.source = ColumnDataSource({"t": [], "rate": [], "input_rate": []})
        chart = figure(height=180, sizing_mode="stretch_width", x_axis_label="seconds",
                       y_axis_label="items/s", toolbar_location=None, title="throughput")
        chart.line("t", "rate", source=self.source, line_width=2, legend_label="output")
        if stream.producer:
            chart.line("t", "input_rate", source=self.source, line_width=2, line_dash="dashed",
                       color="#d95f02", legend_label="input")
        chart.legend.location = "top_left"
        self.chart = BokehModel(chart)
        super().__init__([self.title, self.counters, self.chart, self.table, self.last_error])
        # Stable hooks for styling and for the browser test.
        self.add_class("perper-stream-view")
        for widget, name in ((self.title, "title"), (self.counters, "counters"), (self.chart, "chart"),
                             (self.table, "table"), (self.last_error, "last-error")):
            widget.add_class(f"perper-{name}")
        self._stop = threading.Event()
        self.updates = 0
        self._thread = threading.Thread(target=self._pump, name=f"perper-view-{stream.name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        # What a terminal shows instead of the widget.
        return (f"<live view of stream {self.stream.name!r}: shown in Jupyter; in a terminal read it with "
                f"perper_lab.stream({self.stream.name!r}).tail()>")

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop updating (the widgets keep their last state)."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        super().close()

    def _pump(self) -> None:
        started = time.monotonic()
        previous: tuple[float, int, int] | None = None  # when, output items, input items
        last_table = 0.0
        shown_items = False
        try:
            # pyignite clients are not thread-safe: the pump has its own connection.
            with FabricClient(self.stream.fabric.address, timeout=self.stream.fabric.timeout) as fabric:
                stream = self.stream.bind(fabric)
                errors = self.errors.bind(fabric) if self.errors else None
                while not self._stop.is_set():
                    now = time.monotonic()
                    heads = stream.heads()
                    count = sum(h.items for h in heads)
                    closed = all(h.closed for h in heads)
                    progress = api.function_progress(stream.producer, fabric) if stream.producer else None
                    offered = progress["offered"] if progress else 0
                    error_count = progress["errors"] if progress else 0
                    elapsed = now - previous[0] if previous else 0.0
                    rate = (count - previous[1]) / elapsed if previous else 0.0
                    input_rate = (offered - previous[2]) / elapsed if previous else 0.0
                    previous = (now, count, offered)
                    self.source.stream({"t": [round(now - started, 2)], "rate": [rate], "input_rate": [input_rate]},
                                       rollover=int(CHART_SECONDS / self.period))
                    with self.counters.hold_sync():
                        self.counters.value = _counters_html(count, rate, error_count, closed, progress, input_rate)
                    if closed or now - last_table >= 1.0 or (count and not shown_items):
                        self._show_table(stream.tail(self.rows))
                        if errors and error_count:
                            self._show_last_error(errors.tail(1))
                        last_table = now
                    # A failed or stopped function writes no more: the view has nothing left to follow.
                    ended = progress["state"] if progress and progress["state"] in ("failed", "stopped") else None
                    self.title.value = f"<b>{html.escape(stream.name)}</b> &nbsp;" + (
                        "<i>closed</i>" if closed else f"<i>{ended}</i>" if ended else "<i>live</i>")
                    self.updates += 1
                    shown_items = shown_items or bool(count)
                    if closed or ended:
                        return
                    # Quick refreshes until the first items show, so a new cell answers within a fraction
                    # of a second; then the steady rate.
                    self._stop.wait(self.period if count else FAST_PERIOD)
        except PerperError as exc:
            self.title.value = (f"<b>{html.escape(self.stream.name)}</b> &nbsp;"
                                f"<i>view stopped: {html.escape(str(exc))}</i>")
            if self.counters.value:  # the last figures seen, not the state now
                self.counters.value = f"<i>as last seen:</i> {self.counters.value.replace('live', 'unknown')}"

    def _show_table(self, frame: pd.DataFrame) -> None:
        self.table.outputs = (_display_data(frame),)

    def _show_last_error(self, frame: pd.DataFrame) -> None:
        record = frame.iloc[-1].to_dict()
        text = f"last error: {record.get('error')}: {record.get('message')}\n{record.get('traceback', '')}"
        self.last_error.outputs = ({"output_type": "stream", "name": "stderr", "text": text},)


def _counters_html(count: int, rate: float, errors: int, closed: bool, progress: dict[str, Any] | None,
                   input_rate: float) -> str:
    cells = [("items", f"{count:,}"), ("items/s", f"{rate:,.0f}")]
    if progress:
        cells += [("input items/s", f"{input_rate:,.0f}"), ("lag", f"{progress['lag']:,}"),
                  ("instances", f"{progress['instances']} of {progress['parallelism']}")]
    cells.append(("errors", f"{errors:,}"))
    if progress:
        cells.append(("function", progress["state"]))
    cells.append(("state", "closed" if closed else "live"))
    return " &nbsp; ".join(f"{name}: <b>{value}</b>" for name, value in cells)


def _display_data(frame: pd.DataFrame) -> dict[str, Any]:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/html": frame.to_html(max_rows=50), "text/plain": frame.to_string(max_rows=50)}}
