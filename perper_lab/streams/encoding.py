"""How a batch of stream items becomes one cache value (bytes), and back.

A batch is a list of Python values pickled with protocol 5, behind a one-byte tag. The end of a
partition is itself a batch (tag ``E``), so a reader learns of it with the same key lookup it uses for
data. Pickle round-trips every Python value exactly (tuples stay tuples, datetimes keep their tzinfo).
"""

from __future__ import annotations

import pickle
from typing import Any

_ITEMS = b"P"
_END = b"E"
END_OF_PARTITION = _END


def encode_items(items: list[Any]) -> bytes:
    return _ITEMS + pickle.dumps(items, protocol=5)


def is_end(value: bytes) -> bool:
    return value[:1] == _END


def decode_items(value: bytes) -> list[Any]:
    """The items of a batch; an end-of-partition marker holds none."""
    tag = value[:1]
    if tag == _ITEMS:
        return pickle.loads(value[1:])
    if tag == _END:
        return []
    raise ValueError(f"not a perper_lab batch (tag {tag!r})")
