"""``%%perper_stream`` and ``%perper``: stream functions from notebook cells."""

from __future__ import annotations

import ast
import inspect
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from perper_lab import api
from perper_lab.errors import PerperError
from perper_lab.notebook.view import StreamView
from perper_lab.runtime.registry import register_function, stop_function
from perper_lab.streams import open_stream


def defined_functions(cell: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions a cell defines at top level; a cell that does not parse is a UsageError saying where."""
    try:
        tree = ast.parse(cell)
    except SyntaxError as exc:
        raise UsageError(f"the cell has a syntax error on line {exc.lineno}: {exc.msg}") from None
    return [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


@magics_class
class PerperMagics(Magics):
    @no_var_expand
    @magic_arguments()
    @argument("output", help="name of the stream the function writes")
    @argument("--input", "-i", nargs="+", action="extend", default=[], metavar="STREAM",
              help="the stream(s) the function reads (several: a merge)")
    @argument("--parallelism", "-p", type=int, default=1, help="instances running in parallel (default 1)")
    @argument("--partitions", type=int, help="output partitions of a --source (default 1)")
    @argument("--batch", action="store_true", help="the function takes and returns a pandas DataFrame per batch")
    @argument("--source", action="store_true", help="the function takes no input and yields the stream's items")
    @argument("--on-error", default="skip", help="skip (default), stop or retry=N")
    @argument("--replay", action="store_true",
              help="reprocess the input from the start into a new generation of OUTPUT (the old one stays)")
    @cell_magic("perper_stream")
    def perper_stream(self, line: str, cell: str) -> StreamView:
        """Run the one function this cell defines on every item of the input stream(s), writing OUTPUT.

        A plain function is a map (return None to drop the item); a generator function may yield any
        number of items per input item; with --batch the function maps a DataFrame to a DataFrame;
        with --source it takes no argument and yields the items of OUTPUT. The seed's style,
        ``def main(context, data)``, is a map whose context tells the stream and position.
        The cell returns at once with a live view of OUTPUT.
        """
        args = _parse(self.perper_stream, line)
        if args.source and args.batch:
            raise UsageError("--source and --batch exclude each other")
        if args.source and args.input:
            raise UsageError("--source and --input exclude each other: a source reads no stream (drop --input), "
                             "a function over a stream is no source (drop --source)")
        if not args.source and not args.input:
            raise UsageError("%%perper_stream needs --input STREAM [STREAM ...], or --source for a function "
                             "that takes no input")
        if args.partitions is not None and not args.source:
            raise UsageError("--partitions applies to a --source only: a function over --input writes one "
                             "output partition per input partition")
        functions = defined_functions(cell)
        if len(functions) != 1:
            found = ", ".join(f.name for f in functions) or "none"
            raise UsageError(f"a %%perper_stream cell must define exactly one function; found {len(functions)} "
                             f"({found})")
        result = self.shell.run_cell(cell, store_history=False)
        if not result.success:
            raise UsageError(f"the cell failed, so {functions[0].name!r} was not registered (see the error above)")
        fn = self.shell.user_ns[functions[0].name]
        kind = ("source" if args.source else "batch" if args.batch
                else "flat_map" if inspect.isgeneratorfunction(fn) else "map")
        try:
            fabric = api.current_fabric()
            spec = register_function(fabric, fn, args.output, args.input, kind=kind,
                                     parallelism=args.parallelism, on_error=args.on_error,
                                     partitions=args.partitions or 1, replay=args.replay,
                                     source=ast.get_source_segment(cell, functions[0]))
            view = StreamView(open_stream(fabric, spec.output), errors=open_stream(fabric, spec.errors_stream))
        except PerperError as exc:
            raise UsageError(str(exc)) from None
        _remember(view)
        return view

    @no_var_expand
    @line_magic("perper")
    def perper(self, line: str) -> object:
        """%perper status | stop OUTPUT | delete STREAM | workers N | fabric | show STREAM"""
        words = shlex.split(line)
        command, rest = (words[0], words[1:]) if words else ("", [])
        try:
            if command == "status" and not rest:
                return _StatusDisplay(api.status())
            if command == "delete" and len(rest) == 1:
                api.delete(rest[0])
                return f"deleted {rest[0]!r}"
            if command == "stop" and len(rest) == 1:
                stop_function(api.current_fabric(), rest[0])
                return f"stopped {rest[0]!r}; its output stays readable"
            if command == "workers" and len(rest) == 1:
                if not rest[0].isdigit():
                    raise UsageError(f"%perper workers N needs a number of workers (0 or more), not {rest[0]!r}")
                return _scale_workers(int(rest[0]))
            if command == "fabric" and not rest:
                from perper_lab.notebook.extension import current_session

                session = current_session()
                where = session.describe() if session else f"connected to {api.current_fabric().address}"
                nodes = api.current_fabric().server_count()  # a fabric that went down says so here
                return f"{where}; {nodes} server node(s) answer"
            if command == "show" and len(rest) == 1:
                return StreamView(open_stream(api.current_fabric(), rest[0]))
        except PerperError as exc:
            raise UsageError(str(exc)) from None
        if command in _USAGE:
            raise UsageError(f"%perper {line}: use %perper {_USAGE[command]}")
        raise UsageError(f"unknown %perper command {command!r}; use: {' | '.join(_USAGE.values())}")


_USAGE = {"status": "status", "stop": "stop OUTPUT", "delete": "delete STREAM", "workers": "workers N",
          "fabric": "fabric", "show": "show STREAM"}


def _parse(magic: object, line: str):  # noqa: ANN202 - argparse.Namespace
    try:
        return parse_argstring(magic, line)
    except UsageError as exc:
        raise UsageError(f"%%perper_stream {line}: {exc}") from None


def _scale_workers(count: int) -> str:
    import perper_lab

    perper_lab.workers().scale(count)
    return f"{count} local worker(s) running"


def _remember(view: StreamView) -> None:
    from perper_lab.notebook.extension import current_session

    session = current_session()
    if session is not None:
        session.views[:] = [v for v in session.views if v.running] + [view]


class _StatusDisplay:
    """Shows the three status tables one under the other."""

    def __init__(self, tables: dict) -> None:
        self.tables = tables

    def _repr_html_(self) -> str:
        return "".join(f"<h4>{name}</h4>{frame.to_html(index=False)}" for name, frame in self.tables.items())

    def __repr__(self) -> str:
        return "\n\n".join(f"{name}:\n{frame.to_string(index=False)}" for name, frame in self.tables.items())
