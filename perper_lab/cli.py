"""The ``perper-lab`` command: run a local fabric, run workers, inspect the fabric, run the demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from perper_lab.errors import PerperError
from perper_lab.fabric.launcher import DEFAULT_REGION_MB


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except (PerperError, TimeoutError) as exc:
        print(f"perper-lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perper-lab", description=__doc__)
    commands = parser.add_subparsers(metavar="COMMAND")

    fabric = commands.add_parser("fabric", help="start, inspect or stop a local fabric (Ignite nodes)")
    fabric_commands = fabric.add_subparsers(metavar="ACTION", required=True)
    start = fabric_commands.add_parser("start", help="start local fabric nodes and wait until they are ready")
    start.add_argument("--nodes", type=int, default=1, help="number of server nodes (default 1)")
    start.add_argument("--persistence", metavar="DIR", help="keep data on disk in DIR (Ignite native persistence)")
    start.add_argument("--port-offset", type=int, default=0,
                       help="add this to every port (thin client 10800+i, discovery 47500+i, communication 47100+i)")
    start.add_argument("--region-mb", type=int, default=DEFAULT_REGION_MB,
                       help=f"cap of each node's data region in MB (default {DEFAULT_REGION_MB}); an in-memory "
                            "fabric holds every stream, so delete streams you no longer need")
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the nodes (default 120)")
    start.set_defaults(handler=fabric_start)
    for name, handler, text in (("status", fabric_status, "show the local fabric's nodes"),
                                ("stop", fabric_stop, "stop the local fabric's nodes")):
        sub = fabric_commands.add_parser(name, help=text)
        sub.set_defaults(handler=handler)
    for sub in fabric_commands.choices.values():
        sub.add_argument("--run-dir", help="where logs and PID files live (default ~/.perper_lab/fabric)")

    worker = commands.add_parser("worker", help="run stream functions registered in the fabric")
    worker.add_argument("--fabric", help="HOST:PORT[,HOST:PORT...] (default: $PERPER_FABRIC or 127.0.0.1:10800)")
    worker.add_argument("--slots", type=int, help="run at most this many function instances")
    worker.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(handler=run_worker)

    status = commands.add_parser("status", help="streams, functions and workers of a fabric")
    status.add_argument("--fabric", help="HOST:PORT[,HOST:PORT...] (default: $PERPER_FABRIC or 127.0.0.1:10800)")
    status.set_defaults(handler=show_status)

    delete = commands.add_parser("delete", help="delete a stream (and the function writing it, if any)")
    delete.add_argument("name")
    delete.add_argument("--fabric", help="HOST:PORT[,HOST:PORT...] (default: $PERPER_FABRIC or 127.0.0.1:10800)")
    delete.set_defaults(handler=delete_stream_or_function)

    run = commands.add_parser("run", help="register a seed-style function app (folders with function.json "
                                          "and __init__.py) and let the workers run it")
    run.add_argument("app_dir", help="the app folder (one subfolder per function) or one function folder")
    run.add_argument("--input", required=True, help="the stream the functions read")
    run.add_argument("--output", help="the stream written (default: the function's folder name; one function only)")
    run.add_argument("--fabric", help="HOST:PORT[,HOST:PORT...] (default: $PERPER_FABRIC or 127.0.0.1:10800)")
    run.add_argument("--parallelism", type=int, default=1, help="instances running in parallel (default 1)")
    run.add_argument("--wait", action="store_true", help="wait until the output is closed, then print its size")
    run.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    run.set_defaults(handler=run_app)

    demo = commands.add_parser("demo", help="run the NYC flights notebook headlessly on an embedded fabric")
    demo.add_argument("--output", default="output", help="folder for the executed notebook and its HTML copy")
    demo.set_defaults(handler=run_demo)
    return parser


def fabric_start(args: argparse.Namespace) -> None:
    from perper_lab.fabric.launcher import LocalFabric

    fabric = LocalFabric(args.run_dir, nodes=args.nodes, port_offset=args.port_offset,
                         persistence=args.persistence, region_mb=args.region_mb)
    fabric.start(timeout=args.timeout)
    print(f"fabric ready: {args.nodes} node(s) at {fabric.address} (logs in {fabric.run_dir})")
    print(f"connect with: export PERPER_FABRIC={fabric.address}")


def fabric_status(args: argparse.Namespace) -> int:
    from perper_lab.fabric.client import FabricClient
    from perper_lab.fabric.launcher import LocalFabric

    fabric = LocalFabric.load(args.run_dir)
    statuses = fabric.status()
    for node in statuses:
        state = f"running (pid {node.pid})" if node.running else "stopped"
        print(f"node {node.index}: {state}, thin client {node.client_address}")
    running = [node.client_address for node in statuses if node.running]
    if not running:
        print("fabric: stopped")
        return 1
    with FabricClient(",".join(running), timeout=5.0) as client:
        print(f"fabric: {client.server_count()} server node(s) in the cluster")
    return 0


def fabric_stop(args: argparse.Namespace) -> None:
    from perper_lab.fabric.launcher import LocalFabric

    fabric = LocalFabric.load(args.run_dir)
    running = [node for node in fabric.status() if node.running]
    if not running:
        print(f"no node of the fabric in {args.run_dir} is running: nothing to stop")
        return
    fabric.stop()
    print(f"fabric stopped ({len(running)} node(s))")


def run_worker(args: argparse.Namespace) -> None:
    from perper_lab.runtime.pool import exit_with_parent
    from perper_lab.runtime.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.exit_with_parent:
        exit_with_parent()
    if args.slots is not None and args.slots < 1:
        raise PerperError(f"--slots must be at least 1, not {args.slots}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Worker(args.fabric, slots=args.slots).run(stop)


def show_status(args: argparse.Namespace) -> None:
    from perper_lab.api import status_text
    from perper_lab.fabric.client import FabricClient

    with FabricClient(args.fabric) as client:
        print(status_text(client))


def delete_stream_or_function(args: argparse.Namespace) -> None:
    from perper_lab import api

    with api.connect(args.fabric) as client:
        api.delete(args.name, client)
    print(f"deleted {args.name!r}")


def run_app(args: argparse.Namespace) -> None:
    from perper_lab import api

    api.connect(args.fabric)
    specs = api.run_app(args.app_dir, args.input, output=args.output, parallelism=args.parallelism)
    for spec in specs:
        print(f"{spec.function_name}: {args.input} -> {spec.output} (version {spec.version}); the workers run it")
    if args.wait:
        for spec in specs:
            stream = api.stream(spec.output)
            stream.wait_closed(args.timeout)
            failed = api.stream(spec.errors_stream).count()
            print(f"{spec.output}: closed with {stream.count()} items"
                  + (f"; {failed} item(s) failed, see the dead-letter stream {spec.errors_stream!r}" if failed else ""))


def run_demo(args: argparse.Namespace) -> int:
    from perper_lab.demo import run_flights_demo

    return run_flights_demo(Path(args.output))


if __name__ == "__main__":
    sys.exit(main())
