"""The one place that talks to pyignite.

Every call has a timeout, idempotent calls are retried a bounded number of times with a fresh
connection, and every pyignite exception is translated into the perper_lab error tree here, with a
message that says what to do. pyignite's sync client is not thread-safe, so a :class:`FabricClient`
serialises its calls with a lock; threads that need throughput open their own client.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pyignite import Client
from pyignite import exceptions as pyignite_errors

from perper_lab.errors import FabricError, FabricTimeout, FabricUnavailable

T = TypeVar("T")

DEFAULT_ADDRESS = "127.0.0.1:10800"
DEFAULT_TIMEOUT = 5.0
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)

# pyignite logs every failed handshake at ERROR with a traceback; our own errors say it better.
logging.getLogger("pyignite").setLevel(logging.CRITICAL)

_CONNECTION_ERRORS = (
    pyignite_errors.ReconnectError,
    pyignite_errors.SocketError,
    ConnectionError,
    OSError,
)


def parse_addresses(addresses: str | Iterable[tuple[str, int]] | None) -> list[tuple[str, int]]:
    """Turn ``"host:port[,host:port...]"`` (or ``PERPER_FABRIC``, or the default) into a node list.

    >>> parse_addresses("127.0.0.1:10800,127.0.0.1:10801")
    [('127.0.0.1', 10800), ('127.0.0.1', 10801)]
    """
    if addresses is None:
        addresses = os.environ.get("PERPER_FABRIC") or DEFAULT_ADDRESS
    if not isinstance(addresses, str):
        return [(str(host), int(port)) for host, port in addresses]
    nodes = []
    for part in addresses.split(","):
        host, sep, port = part.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):  # an IPv6 address, [::1]:10800
            host = host[1:-1]
        elif ":" in host:
            host = ""  # a scheme (http://...) or a second port: not HOST:PORT
        if any(c in host for c in "/ \t"):
            host = ""
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FabricError(
                f"bad fabric address {part.strip()!r}: expected HOST:PORT, e.g. 127.0.0.1:10800 "
                "(several separated by commas)"
            )
        nodes.append((host, int(port)))
    return nodes


def format_addresses(nodes: list[tuple[str, int]]) -> str:
    return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in nodes)


class FabricCache:
    """A fabric cache seen through :class:`FabricClient`: same calls as pyignite, translated errors."""

    def __init__(self, client: FabricClient, name: str) -> None:
        self._client = client
        self.name = name

    def _run(self, what: str, op: Callable[[Any], T], *, idempotent: bool = True) -> T:
        return self._client.run(f"{what} on {self.name}", lambda _: op(self._client.raw_cache(self.name)),
                                idempotent=idempotent)

    def get(self, key: str) -> Any:
        return self._run("get", lambda cache: cache.get(key))

    def get_all(self, keys: list[str]) -> dict[str, Any]:
        if not keys:
            return {}
        return self._run("get_all", lambda cache: cache.get_all(keys))

    def put(self, key: str, value: Any) -> None:
        self._run("put", lambda cache: cache.put(key, value))

    def put_all(self, pairs: dict[str, Any]) -> None:
        if pairs:
            self._run("put_all", lambda cache: cache.put_all(pairs))

    def put_if_absent(self, key: str, value: Any) -> bool:
        """Insert only if the key is absent. Not retried: after a lost connection the outcome is unknown."""
        return self._run("put_if_absent", lambda cache: cache.put_if_absent(key, value), idempotent=False)

    def replace_if_equals(self, key: str, expected: Any, value: Any) -> bool:
        """Server-side compare-and-set. Not retried, for the same reason as :meth:`put_if_absent`."""
        return self._run("replace_if_equals", lambda cache: cache.replace_if_equals(key, expected, value),
                         idempotent=False)

    def remove_if_equals(self, key: str, expected: Any) -> bool:
        return self._run("remove_if_equals", lambda cache: cache.remove_if_equals(key, expected),
                         idempotent=False)

    def remove_keys(self, keys: list[str]) -> None:
        if keys:
            self._run("remove_keys", lambda cache: cache.remove_keys(keys))

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """All entries whose key starts with ``prefix`` (a scan; use on small control caches only)."""

        def scan(cache: Any) -> list[tuple[str, Any]]:
            with cache.scan(page_size=512) as cursor:
                return [(k, v) for k, v in cursor if isinstance(k, str) and k.startswith(prefix)]

        return self._run("scan", scan)


class FabricClient:
    """A connection to the fabric (one or more Ignite nodes), safe to share between threads.

    >>> fabric = FabricClient("127.0.0.1:10800")   # doctest: +SKIP
    >>> fabric.cache("perper-control-streams").get("flights")   # doctest: +SKIP
    """

    def __init__(self, addresses: str | list[tuple[str, int]] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.nodes = parse_addresses(addresses)
        self.timeout = timeout
        self._lock = threading.RLock()
        self._client: Client | None = None
        self._caches: dict[str, FabricCache] = {}
        self._raw_caches: dict[str, Any] = {}
        with self._lock:
            self._connect()

    @property
    def address(self) -> str:
        return format_addresses(self.nodes)

    def _connect(self) -> Client:
        client = Client(timeout=self.timeout, handshake_timeout=self.timeout)
        try:
            client.connect(self.nodes)
        except _CONNECTION_ERRORS as exc:
            raise FabricUnavailable(
                f"no fabric node answers at {self.address} ({_reason(exc)}). Start a local fabric with "
                "`perper-lab fabric start`, or point PERPER_FABRIC at a running one (host:port[,host:port])."
            ) from None
        self._client = client
        return client

    def _reconnect(self) -> Client:
        self._drop()
        return self._connect()

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a broken connection may fail in any way; it is gone either way
                pass
            self._client = None
        self._raw_caches.clear()

    def raw_cache(self, name: str) -> Any:
        """pyignite's cache object for ``name`` on the current connection (created once per connection)."""
        if name not in self._raw_caches:
            self._raw_caches[name] = (self._client or self._connect()).get_or_create_cache(name)
        return self._raw_caches[name]

    def cache(self, name: str) -> FabricCache:
        if name not in self._caches:
            self._caches[name] = FabricCache(self, name)
        return self._caches[name]

    def run(self, what: str, op: Callable[[Client], T], *, idempotent: bool = True) -> T:
        """Run ``op`` with the pyignite client; translate its errors; retry it if it is idempotent."""
        delays = RETRY_DELAYS if idempotent else ()
        with self._lock:
            for attempt in range(len(delays) + 1):
                try:
                    client = self._client or self._connect()
                    return op(client)
                except FabricUnavailable:
                    if attempt == len(delays):
                        raise
                except TimeoutError:
                    self._drop()
                    if attempt == len(delays):
                        raise FabricTimeout(
                            f"{what} took longer than {self.timeout:g}s at {self.address}; the fabric is "
                            "overloaded or a node is stuck (see `perper-lab fabric status`)"
                        ) from None
                except _CONNECTION_ERRORS as exc:
                    self._drop()
                    if attempt == len(delays):
                        raise FabricUnavailable(
                            f"lost the fabric at {self.address} during {what} ({_reason(exc)}); "
                            "check that its nodes are running (`perper-lab fabric status`)"
                        ) from None
                except pyignite_errors.CacheError as exc:
                    # The status code is dropped by pyignite; a lost partition or a stopping node is
                    # transient, anything else is not worth repeating.
                    if attempt == len(delays) or not _transient(exc):
                        raise FabricError(f"the fabric refused {what}: {_reason(exc)}") from None
                    self._drop()
                except pyignite_errors.ParameterError as exc:
                    raise FabricError(f"bad fabric request ({what}): {_reason(exc)}") from None
                time.sleep(delays[attempt])
        raise AssertionError("unreachable")

    def sql(self, query: str, args: list | None = None) -> list[list[Any]]:
        def run_query(client: Client) -> list[list[Any]]:
            with client.sql(query, query_args=args or [], page_size=1024) as cursor:
                return [list(row) for row in cursor]

        return self.run("sql", run_query)

    def server_count(self) -> int:
        return int(self.sql("SELECT COUNT(*) FROM SYS.NODES WHERE IS_CLIENT = FALSE")[0][0])

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> FabricClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _transient(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("lost", "stopping", "topology", "rebalanc", "not started", "inactive"))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
