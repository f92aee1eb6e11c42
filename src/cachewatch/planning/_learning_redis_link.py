"""How the shared learned state talks to Redis: one script per batch of ops, failing open.

Place in the flow: ``RedisLearner`` -> **RedisLink** (one ``EVALSHA`` of the learner's
script per batch, one round trip) -> Redis; on a fault -> the learner's local fallback.

:meth:`RedisLink._run` fails open: every socket operation has ``timeout`` and no retries;
a fault is counted (``faults``), reported to ``on_fault("learner", exc)`` and the call is
answered by ``local``, as is every call for ``retry_after`` seconds after it (doubling
while faults go on, up to 30 s). Every call waits for its reply: what the learner is told
is applied in Redis, for every process, by the time the call returns. What ends a claim
(a release, a response's start, a failed request) and was answered locally is *owed* to
Redis: sent ahead of the next batch that reaches it (at most ``MAX_OWED`` kept), so a
claim made there before the fault does not hold every process off its prefix for
``CLAIM_TIMEOUT``; those ops are idempotent, so one applied before its reply was lost
is harmless again. (Messages sent
without waiting, behind ``CLIENT REPLY SKIP``, were tried: two connections do not keep
their order, so another process could plan on state from before such a message.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from ._learning_redis_scripts import decode, encode

__all__ = ["RedisLink", "client_from_url", "client_with_timeout"]

_log = logging.getLogger("cachewatch")
_T = TypeVar("_T")
_MAX_BACKOFF: Final = 30.0
#: Ops owed to Redis kept at most (the first ones: the claims of requests in flight when
#: Redis failed), and sent ahead of one batch at most.
MAX_OWED: Final = 256
_OWED_PER_BATCH: Final = 64


class RedisLink:
    """The Redis side of :class:`~cachewatch.planning._learning_redis.RedisLearner`.

    Args:
        client: the learner's client (its own pool, ``timeout``, no retries).
        key_prefix: namespace of every key (the script's first argument).
        script: the Lua of every batch.
        on_fault / retry_after: as :class:`~cachewatch.planning._learning_redis.RedisLearner`.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str,
        script: str,
        on_fault: Callable[[str, BaseException], object] | None,
        retry_after: float,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.on_fault = on_fault
        self.retry_after = retry_after
        #: Faults survived (also reported to ``on_fault``).
        self.faults = 0
        self._down_until = 0.0
        self._backoff = retry_after
        self._logged = False
        self._lock = threading.Lock()
        #: Ops answered locally that Redis still has to apply (claims ending).
        self._owed: list[list[object]] = []
        self._script = client.register_script(script)

    @property
    def _down(self) -> bool:
        """Redis failed a moment ago and is left alone."""
        return bool(self._down_until) and time.monotonic() < self._down_until

    def _run(
        self, call: Callable[[], _T], local: Callable[[], _T], owed: list[list[object]] | None = None
    ) -> _T:
        """``call`` against Redis; on a fault (or while Redis is left alone) ``local``, and
        ``owed`` (ops) is sent ahead of the next batch that reaches Redis."""
        if self._down:
            if owed:
                self._owe(owed)
            return local()
        try:
            result = call()
        except Exception as exc:
            self._fault(exc)
            if owed:
                self._owe(owed)
            return local()
        self._recovered()
        return result

    def _recovered(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until = 0.0
                self._backoff = self.retry_after

    def _fault(self, exc: BaseException) -> None:
        with self._lock:
            self.faults += 1
            self._down_until = time.monotonic() + self._backoff
            self._backoff = min(_MAX_BACKOFF, self._backoff * 2.0)
            first = not self._logged
            self._logged = True
        try:
            if self.on_fault is not None:
                self.on_fault("learner", exc)
            elif first:
                _log.warning(
                    "cachewatch: the shared learned state is unreachable (%s); planning on local state.",
                    type(exc).__name__,
                )
        except Exception:  # pragma: no cover - a fault callback must not break planning
            pass

    def _eval(self, ops: list[list[object]]) -> list[Any]:
        """One batch of ops, one round trip; their replies in order (see :meth:`_eval_blobs`)."""
        return self._eval_blobs(ops)[0]

    def _eval_blobs(self, ops: list[list[object]]) -> tuple[list[Any], list[bytes]]:
        """One batch of ops, one round trip: (their replies, the binary values they name).

        Ops owed to Redis go first (their replies dropped); back in the queue if it fails.
        """
        owed: list[list[object]] = []
        if self._owed:
            with self._lock:
                owed = self._owed[:_OWED_PER_BATCH]
                del self._owed[:_OWED_PER_BATCH]
        try:
            replies, blobs = decode(self._script(args=[self.prefix, *encode(owed + ops)], client=self.client))
        except BaseException:
            if owed:
                with self._lock:
                    self._owed[:0] = owed[: MAX_OWED - len(self._owed)]
            raise
        return (replies[len(owed) :] if owed else replies), blobs

    def _owe(self, ops: list[list[object]]) -> None:
        with self._lock:
            if len(self._owed) + len(ops) <= MAX_OWED:
                self._owed += ops

    def _tell(self, ops: list[list[object]], local: Callable[[], object], *, owed: bool = False) -> None:
        """A batch whose replies are not needed; while Redis is left alone or on a fault,
        ``local`` (and with ``owed`` the batch is owed to Redis)."""
        self._run(lambda: self._eval(ops), local, ops if owed else None)


def client_from_url(url: str, timeout: float) -> Any:
    """A client for ``url`` with ``timeout`` and no retries (``redis`` is the ``[redis]`` extra)."""
    from .._extras import require

    require("RedisLearner", "redis", "redis")
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    pool = client.connection_pool
    pool.connection_class = deadline_connection_class(pool.connection_class, timeout)
    return client


class _DeadlineSocket:
    """A connection's socket whose reads end at the call's deadline (``_DeadlineConnection``).

    redis-py's ``socket_timeout`` bounds each ``recv``: a server (or a link) that sends its
    reply a byte at a time, each within the timeout, held a call for seconds. Each read
    here waits at most until the deadline of the call it belongs to, then times out as a
    slow ``recv`` does (redis-py reports a ``TimeoutError``). Everything else is the socket's.
    """

    __slots__ = ("_conn", "_sock")

    def __init__(self, sock: Any, conn: Any) -> None:
        self._sock = sock
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def _read(self, read: Any, *args: Any) -> Any:
        """``read(*args)`` (the socket's ``recv`` or ``recv_into``) waiting at most until the
        call's deadline."""
        remaining = self._conn._cachewatch_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")  # socket.timeout, as a slow recv raises
        current = self._sock.gettimeout()
        if current is None or remaining < current:
            self._sock.settimeout(remaining)
        try:
            return read(*args)
        finally:
            self._sock.settimeout(self._conn._cachewatch_timeout)

    def recv(self, *args: Any) -> Any:
        return self._read(self._sock.recv, *args)

    def recv_into(self, *args: Any) -> Any:
        return self._read(self._sock.recv_into, *args)


_DEADLINE_CLASSES: dict[tuple[Any, float], Any] = {}


def deadline_connection_class(base: Any, timeout: float) -> Any:
    """``base`` (a redis-py connection class: TCP, TLS or unix socket) whose every call,
    its reply included, ends within ``timeout`` seconds of being sent."""
    key = (base, timeout)
    found = _DEADLINE_CLASSES.get(key)
    if found is not None:
        return found

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> Any:
        self._cachewatch_deadline = time.monotonic() + timeout
        return base.send_packed_command(self, command, check_health)

    def _connect(self: Any) -> Any:
        return _DeadlineSocket(base._connect(self), self)

    cls = type(
        f"Deadline{base.__name__}",
        (base,),
        {
            "_cachewatch_timeout": timeout,
            "_cachewatch_deadline": float("inf"),
            "send_packed_command": send_packed_command,
            "_connect": _connect,
        },
    )
    _DEADLINE_CLASSES[key] = cls
    return cls


#: Client types already warned about (:func:`client_with_timeout`).
_UNBOUNDED_WARNED: set[str] = set()


def client_with_timeout(client: Any, timeout: float) -> Any:
    """A client to the same server as ``client``, with ``timeout`` and no retries (own pool)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = getattr(client, "connection_pool", None)
    if pool is None or not hasattr(pool, "connection_kwargs"):
        # Not a plain redis.Redis (a cluster client, a proxy object): used as it is, so its
        # calls on the request path are bounded only by its own timeouts. Said once.
        kind = type(client).__name__
        if kind not in _UNBOUNDED_WARNED:
            _UNBOUNDED_WARNED.add(kind)
            _log.warning(
                "cachewatch: a %s client is used as given; give it a socket_timeout (and "
                "socket_connect_timeout) of about %g s, or pass a plain redis.Redis, so that "
                "a slow Redis cannot hold requests up",
                kind,
                timeout,
            )
        return client
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(socket_timeout=timeout, retry=Retry(NoBackoff(), 0), decode_responses=False)
    if "path" not in kwargs:  # TCP (a unix socket connects at once)
        kwargs["socket_connect_timeout"] = timeout
    connection_class = deadline_connection_class(pool.connection_class, timeout)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=connection_class, **kwargs))
