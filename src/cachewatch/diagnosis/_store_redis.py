"""A :class:`~cachewatch.FingerprintStore` in Redis, shared by a fleet of processes.

Optional dependency: ``pip install 'cachewatch[redis]'`` (the ``redis`` client, >= 5).

Layout (every key under ``key_prefix``, default ``cachewatch:fp:``):

* ``<prefix>e:<hex key>``: one entry (``Entry.to_json``), with a Redis TTL of the entry's
  TTL plus ``retain`` seconds, so an expired entry stays visible for ``ttl_expired``
  verdicts and for the wasted-write sweep, then disappears by itself.
* ``<prefix>expiry``: a sorted set of the entries with an unread write, scored by their
  expiry time. :meth:`RedisStore.claim_expired` reads the due members and removes them
  with ``ZREM``: only the process whose ``ZREM`` returned 1 counts the entry, so a
  wasted write is counted once across the fleet.

Reads and writes are pipelined (one round trip for a whole request's lookups, one for
its updates). Keys are hashes; values hold no content. Faults propagate to the
diagnoser, whose caller (the engine) counts them and fails open.

Every call is on a request's path, so it goes through a client of the store's own (the
given client's server, credentials and options) with a socket timeout (``timeout``,
50 ms) and no retries: a dead Redis costs a refused connection, a hung one ``timeout``.
After a fault, Redis is left alone for ``retry_after`` seconds (doubling while faults go
on, up to 30 s): meanwhile every call raises :class:`StoreUnavailable` at once, the
request goes undiagnosed and the fault is counted (``stage="diagnosis"``).

Times are the diagnoser's wall clock (``time.time`` by default), so every process
sharing a store must use the same clock.

The same Redis also holds the planner's learned state (``<prefix>learn:...``), unless
``learning=False``: :meth:`RedisStore.learner` gives the engine a
:class:`~cachewatch.planning._learning_redis.RedisLearner` on it, so the processes behind
one application learn together and do not write the same prefix at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._store import Entry

if TYPE_CHECKING:
    from ..planning._learning_redis import RedisLearner

__all__ = ["RedisStore", "StoreUnavailable"]

_T = TypeVar("_T")
_MAX_BACKOFF: Final = 30.0


class StoreUnavailable(ConnectionError):
    """Redis failed a moment ago and is left alone until its back-off ends."""


class RedisStore:
    """Fingerprint entries in Redis.

    Args:
        client: a ``redis.Redis`` client (sync); or None with ``url``.
        url: a Redis URL (``redis://host:6379/0``), used when ``client`` is None.
        key_prefix: namespace of every key.
        retain: seconds an entry is kept past its expiry.
        learning: also share the planner's learned state (write-read statistics, stability,
            conversations, in-flight writes) under ``<key_prefix>learn:``.
        learning_timeout: socket timeout (seconds) of the learned state's calls, which are
            on each request's path; past it the planner goes on with local state.
        timeout: socket (and connect) timeout of the fingerprint calls, also on each
            request's path; past it the request goes undiagnosed.
        retry_after: after a fault, the fingerprint calls (and, apart, the learned
            state's) leave Redis alone this long (doubling while faults go on, at most 30 s).

    Example::

        store = RedisStore(url="redis://127.0.0.1:6379/0")
        transport = cachewatch.CacheWatchTransport(store=store)
    """

    def __init__(
        self,
        client: Any | None = None,
        *,
        url: str | None = None,
        key_prefix: str = "cachewatch:fp:",
        retain: float = 3_600.0,
        learning: bool = True,
        learning_timeout: float = 0.05,
        timeout: float = 0.05,
        retry_after: float = 1.0,
    ) -> None:
        if client is None:
            from .._extras import require

            require("RedisStore", "redis", "redis")
            import redis

            client = redis.Redis.from_url(url or "redis://127.0.0.1:6379/0")
        from ..planning._learning_redis_link import client_with_timeout

        #: The client given (or made from ``url``): maintenance calls and the learner's server.
        self.client = client
        #: The request-path client: ``timeout``, no retries, a pool of its own.
        self._io = client_with_timeout(client, timeout)
        self.timeout = timeout
        self.retry_after = retry_after
        self._down_until = 0.0
        self._backoff = retry_after
        self._lock = threading.Lock()
        self.prefix = key_prefix.encode()
        self.retain = retain
        self.learning = learning
        self.learning_timeout = learning_timeout
        self._index = self.prefix + b"expiry"

    def learner(self, *, fault: Callable[[str, BaseException], object] | None = None) -> RedisLearner | None:
        """The planner's learned state in this Redis (None with ``learning=False``).

        ``fault`` is called as ``fault("learner", exc)`` for each Redis fault the planner
        survives (the engine passes its ``cachewatch_internal_errors_total`` recorder).
        """
        if not self.learning:
            return None
        from ..planning._learning_redis import RedisLearner

        return RedisLearner(
            self.client,
            key_prefix=self.prefix.decode() + "learn:",
            timeout=self.learning_timeout,
            on_fault=fault,
            retry_after=self.retry_after,
        )

    def _call(self, call: Callable[[], _T]) -> _T:
        """``call`` against Redis, unless it failed a moment ago (then :class:`StoreUnavailable`)."""
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable("Redis failed a moment ago; left alone until its back-off ends")
        try:
            result = call()
        except Exception:
            with self._lock:
                self._down_until = time.monotonic() + self._backoff
                self._backoff = min(_MAX_BACKOFF, self._backoff * 2.0)
            raise
        if self._down_until:
            with self._lock:
                self._down_until = 0.0
                self._backoff = self.retry_after
        return result

    def _key(self, key: bytes) -> bytes:
        return self.prefix + b"e:" + key.hex().encode()

    def get(self, key: bytes) -> Entry | None:
        return self.get_many((key,))[0]

    def get_many(self, keys: Sequence[bytes]) -> list[Entry | None]:
        if not keys:
            return []
        names = [self._key(k) for k in keys]
        raw = self._call(lambda: self._io.mget(names))
        return [Entry.from_json(v) if v is not None else None for v in raw]

    def put(self, key: bytes, entry: Entry) -> None:
        self.put_many(((key, entry),))

    def put_many(self, items: Sequence[tuple[bytes, Entry]]) -> None:
        if not items:
            return
        pipe = self._io.pipeline(transaction=False)
        for key, entry in items:
            name = self._key(key)
            seconds = max(1, int(entry.ttl + self.retain + 0.999))
            pipe.set(name, entry.to_json(), ex=seconds)
            if entry.pending_waste:
                pipe.zadd(self._index, {name: entry.expires_at})
        self._call(pipe.execute)

    def claim_expired(self, now: float, limit: int = 1_000) -> list[Entry]:
        return self._call(lambda: self._claim_expired(now, limit))

    def _claim_expired(self, now: float, limit: int) -> list[Entry]:
        io = self._io
        due: list[Any] = list(io.zrangebyscore(self._index, "-inf", now, start=0, num=limit))
        if not due:
            return []
        pipe = io.pipeline(transaction=False)
        for name in due:
            pipe.zrem(self._index, name)
        won = [name for name, removed in zip(due, pipe.execute(), strict=True) if removed]
        if not won:
            return []
        out: list[Entry] = []
        pipe = io.pipeline(transaction=False)
        for name, raw in zip(won, io.mget(won), strict=True):
            if raw is None:
                continue
            entry = Entry.from_json(raw)
            if not entry.pending_waste:
                continue
            if entry.expires_at > now:  # refreshed meanwhile: back into the index
                pipe.zadd(self._index, {name: entry.expires_at})
                continue
            claimed = replace(entry, wasted=True)
            pipe.set(name, claimed.to_json(), keepttl=True)
            out.append(claimed)
        pipe.execute()
        return out

    def clear(self) -> None:
        """Delete every key under the prefix (tests, maintenance)."""
        names = list(self.client.scan_iter(match=self.prefix + b"*", count=1_000))
        if names:
            self.client.delete(*names)
