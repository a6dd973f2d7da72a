"""Experimental variants of perper_lab's hot path, applied at run time in the benchmark's own processes.

Nothing here edits perper_lab: a variant replaces a function or a constant in a live process (a worker
started by ``python -m benchmarks.variants``, or this driver) so that a proposed change can be measured
end to end before anyone writes it. Each variant is named in RESULTS.md next to its figure.

* ``poll=S``: the worker's idle back-off and the consumer's ``wait_for_new`` back-off are capped at S
  seconds (perper_lab doubles both from 1 ms up to ``MAX_POLL_INTERVAL``);
* ``marshal``: a marshal codec for batches of plain builtin values (pickle for anything else), in the
  worker and the driver.
"""

from __future__ import annotations

import contextlib
import marshal
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_MARSHAL = b"M"


def marshal_encode(original: Any) -> Any:
    def encode_items(items: list[Any]) -> bytes:
        try:
            return _MARSHAL + marshal.dumps(items)
        except ValueError:  # a value marshal cannot write (datetime, a class instance, ...)
            return original(items)
    return encode_items


def marshal_decode(original: Any) -> Any:
    def decode_items(value: bytes) -> list[Any]:
        if value[:1] == _MARSHAL:
            return marshal.loads(value[1:])
        return original(value)
    return decode_items


@contextlib.contextmanager
def marshal_codec() -> Iterator[None]:
    """While active, this process writes and reads marshal batches (it still reads pickle batches)."""
    from perper_lab.runtime import execution, runners
    from perper_lab.streams import encoding, stream

    replacement = {"encode_items": marshal_encode(encoding.encode_items),
                   "decode_items": marshal_decode(encoding.decode_items)}
    # every module that imported the codec by name
    saved = [(module, name, getattr(module, name)) for module in (execution, runners, stream)
             for name in replacement if hasattr(module, name)]
    for module, name, _ in saved:
        setattr(module, name, replacement[name])
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


@contextlib.contextmanager
def capped_poll(cap: float) -> Iterator[None]:
    """While active, the idle back-offs of this process (``Worker.run`` and ``Stream.wait_for_new``) grow
    from 1 ms to at most ``cap`` instead of ``MAX_POLL_INTERVAL``: both read the constant at every wait."""
    from perper_lab.runtime import worker
    from perper_lab.streams import stream

    saved = stream.MAX_POLL_INTERVAL, worker.MAX_POLL_INTERVAL
    stream.MAX_POLL_INTERVAL = worker.MAX_POLL_INTERVAL = cap
    try:
        yield
    finally:
        stream.MAX_POLL_INTERVAL, worker.MAX_POLL_INTERVAL = saved


# -- a worker process running a variant, optionally profiled --------------------------------------

class CustomWorker:
    """``python -m benchmarks.variants ADDRESS [--poll S] [--marshal] [--profile OUT]``, a subprocess.

    With ``--profile``, SIGUSR1 starts pyinstrument and SIGUSR2 stops it and saves the session to OUT.
    """

    def __init__(self, address: str, log: Path, *, poll: float | None = None,
                 marshal: bool = False, profile: Path | None = None) -> None:
        self.profile = profile
        args = [sys.executable, "-m", "benchmarks.variants", address]
        if poll is not None:
            args += ["--poll", str(poll)]
        if marshal:
            args.append("--marshal")
        if profile is not None:
            profile.unlink(missing_ok=True)
            args += ["--profile", str(profile)]
        with log.open("ab") as sink:
            self.process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.process.pid

    def start_profile(self) -> None:
        self.process.send_signal(signal.SIGUSR1)

    def stop_profile(self, timeout: float = 60.0) -> Any:
        from pyinstrument.session import Session

        assert self.profile is not None
        self.process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not self.profile.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the profiled worker wrote no profile to {self.profile}")
            time.sleep(0.1)
        return Session.load(str(self.profile))

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _main(argv: list[str]) -> None:
    import argparse

    from perper_lab.runtime.pool import exit_with_parent
    from perper_lab.runtime.worker import Worker

    parser = argparse.ArgumentParser(prog="python -m benchmarks.variants")
    parser.add_argument("address")
    parser.add_argument("--poll", type=float)
    parser.add_argument("--marshal", action="store_true")
    parser.add_argument("--profile")
    args = parser.parse_args(argv)
    exit_with_parent()
    stop = threading.Event()
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        out = Path(args.profile)

        def finish(*_: object) -> None:
            session = profiler.stop()
            tmp = out.with_suffix(".tmp")
            session.save(str(tmp))
            tmp.rename(out)

        signal.signal(signal.SIGUSR1, lambda *_: profiler.start())
        signal.signal(signal.SIGUSR2, finish)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as variants:
        if args.marshal:
            variants.enter_context(marshal_codec())
        if args.poll is not None:
            variants.enter_context(capped_poll(args.poll))
        Worker(args.address).run(stop)


if __name__ == "__main__":
    _main(sys.argv[1:])
