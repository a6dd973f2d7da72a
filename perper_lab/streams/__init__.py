"""Streams: named, partitioned, ordered, persisted sequences of Python values in the fabric."""

from perper_lab.streams.sources import from_dataframe, from_iterable
from perper_lab.streams.stream import (
    Stream,
    StreamWriter,
    create_stream,
    delete_stream,
    list_streams,
    new_generation,
    open_stream,
)

__all__ = ["Stream", "StreamWriter", "create_stream", "delete_stream", "from_dataframe", "from_iterable",
           "list_streams", "new_generation", "open_stream"]
