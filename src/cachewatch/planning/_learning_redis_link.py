"""How the shared learned state talks to Redis: batches with or without a reply, failing open.

Place in the flow: ``RedisLearner`` -> **RedisLink** (one ``EVALSHA`` of the learner's
script per batch) -> Redis; on a fault -> the learner's local fallback.

* :meth:`RedisLink._eval`: a batch whose replies are needed (one round trip);
* :meth:`RedisLink._tell`: a batch nobody waits for. It is sent at once behind
  ``CLIENT REPLY SKIP``: Redis applies it, in order with what the connection sends next,
  and answers nothing, so the caller does not wait. The first such batch goes as an
  ordinary round trip, followed by one that checks that the server honours
  ``CLIENT REPLY`` (a proxy or a server that refuses it keeps getting round trips);
* :meth:`RedisLink._run`: failing open. Every socket operation has ``timeout`` and no
  retries; a fault is counted (``faults``), reported to ``on_fault("learner", exc)`` and
  the call is answered by ``local``, as is every call for ``retry_after`` seconds after it
  (doubling while faults go on, up to 30 s). A batch sent without a reply proves nothing
  about a Redis that hangs, so it does not end a back-off (the next round trip does).

Sending without a reply keeps the order of one connection, and redis-py's pool hands a
thread back the connection it used last; a message that fails to go out is a fault like
any other. What is lost is the report of an error *inside* such a batch (a script error,
a server out of memory), and a batch sent to a Redis that then hangs or dies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

__all__ = ["RedisLink", "client_from_url", "client_with_timeout"]

_log = logging.getLogger("cachewatch")
_T = TypeVar("_T")
_MAX_BACKOFF: Final = 30.0


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
        self._script = client.register_script(script)
        #: Batches without a reply: None until the first one finds out whether the server
        #: takes them; False for a client without a connection pool.
        self._one_way: bool | None = None if hasattr(client, "connection_pool") else False

    @property
    def _down(self) -> bool:
        """Redis failed a moment ago and is left alone."""
        return bool(self._down_until) and time.monotonic() < self._down_until

    def _run(self, call: Callable[[], _T], local: Callable[[], _T]) -> _T:
        """``call`` against Redis; on a fault (or while Redis is left alone) ``local``."""
        if self._down:
            return local()
        try:
            result = call()
        except Exception as exc:
            self._fault(exc)
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

    def _eval(self, ops: list[object]) -> list[Any]:
        """One batch of ops, one round trip; their replies in order."""
        replies: list[Any] = self._script(args=[self.prefix, *ops], client=self.client)
        return replies

    def _tell(self, ops: list[object], local: Callable[[], object]) -> None:
        """A batch nobody waits for; while Redis is left alone or on a fault, ``local``."""
        if self._down:
            local()
            return
        try:
            if self._one_way:
                self._send_without_reply(ops)
                return
            self._eval(ops)
        except Exception as exc:
            self._fault(exc)
            local()
            return
        self._recovered()
        if self._one_way is None:
            self._one_way = self._takes_one_way()

    def _send_without_reply(self, ops: list[object]) -> None:
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(
                conn.pack_commands(
                    [("CLIENT", "REPLY", "SKIP"), ("EVALSHA", self._script.sha, 0, self.prefix, *ops)]
                )
            )
        finally:
            pool.release(conn)

    def _takes_one_way(self) -> bool | None:
        """Whether the server honours ``CLIENT REPLY SKIP`` (None: could not tell, ask again)."""
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except Exception:
            return None
        try:
            conn.send_packed_command(
                conn.pack_commands([("CLIENT", "REPLY", "SKIP"), ("ECHO", "a"), ("ECHO", "b")])
            )
            if _reply(conn) == b"b":
                return True  # "a" was skipped
            _reply(conn)  # refused: every reply comes back ("a", then "b")
            _reply(conn)
            return False
        except Exception:
            conn.disconnect()  # a reply may be left unread: this connection starts afresh
            return None
        finally:
            pool.release(conn)


def _reply(conn: Any) -> Any:
    """One reply off ``conn``; an error reply as the exception object (not raised)."""
    import redis

    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc


def client_from_url(url: str, timeout: float) -> Any:
    """A client for ``url`` with ``timeout`` and no retries (``redis`` is the ``[redis]`` extra)."""
    from .._extras import require

    require("RedisLearner", "redis", "redis")
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def client_with_timeout(client: Any, timeout: float) -> Any:
    """A client to the same server as ``client``, with ``timeout`` and no retries (own pool)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = getattr(client, "connection_pool", None)
    if pool is None or not hasattr(pool, "connection_kwargs"):
        return client  # not a plain redis.Redis: used as it is
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(socket_timeout=timeout, retry=Retry(NoBackoff(), 0), decode_responses=False)
    if "path" not in kwargs:  # TCP (a unix socket connects at once)
        kwargs["socket_connect_timeout"] = timeout
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
