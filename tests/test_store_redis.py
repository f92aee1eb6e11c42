"""The Redis fingerprint store against a real ``redis-server`` started by the test."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from _redis import redis_server
from cachewatch.diagnosis import Entry
from cachewatch.diagnosis._store_redis import RedisStore, StoreUnavailable
from cachewatch.emulator import create_app, run_in_thread


@pytest.fixture
def store(redis_port: int) -> Iterator[RedisStore]:
    # A generous timeout: on a loaded machine a slow answer is not the fault under test.
    s = RedisStore(redis.Redis(port=redis_port), key_prefix=f"test:{time.monotonic_ns()}:", timeout=10.0)
    yield s
    s.clear()


def _entry(**changes: object) -> Entry:
    base = {
        "written_at": 100.0,
        "refreshed_at": 100.0,
        "ttl": 300.0,
        "model": "m",
        "tokens": 2000,
        "position": 3,
        "readable_at": 100.5,
        "written_tokens": 2000,
        "hashes": b"\x01\x02\x03\x04",
    }
    base.update(changes)
    return Entry(**base)  # type: ignore[arg-type]


def test_round_trip_ttl_and_prefix(store: RedisStore) -> None:
    assert store.get(b"k" * 16) is None
    store.put_many([(b"a" * 16, _entry()), (b"b" * 16, _entry(read=True, ttl=3600.0))])
    got = store.get_many([b"a" * 16, b"x" * 16, b"b" * 16])
    assert got[0] == _entry()
    assert got[1] is None
    assert got[2] is not None
    assert got[2].read
    name = store._key(b"a" * 16)
    assert name.startswith(store.prefix)
    ttl = store.client.ttl(name)
    assert 300 < ttl <= 300 + store.retain + 1  # the entry's TTL plus the retention window


def test_claim_expired_once_and_skips_read_or_refreshed(store: RedisStore) -> None:
    store.put_many(
        [
            (b"w" * 16, _entry()),  # expires at 400, unread: wasted
            (b"r" * 16, _entry(read=True)),  # read: never wasted
            (b"f" * 16, _entry(refreshed_at=350.0)),  # expires at 650
        ]
    )
    assert store.claim_expired(399.0) == []
    claimed = store.claim_expired(401.0)
    assert [e.written_tokens for e in claimed] == [2000]
    assert claimed[0].wasted
    assert store.claim_expired(401.0) == []  # once only
    assert store.get(b"w" * 16).wasted  # type: ignore[union-attr]
    assert [e.refreshed_at for e in store.claim_expired(700.0)] == [350.0]


_WORKER = r"""
import json, sys
import httpx, redis
from prometheus_client import CollectorRegistry
import cachewatch
from cachewatch.diagnosis._store_redis import RedisStore

url, port, prefix, system = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
records = []

class Capture:
    name = "capture"
    def start(self, info): return None
    def finish(self, state, record): records.append(record)

store = RedisStore(redis.Redis(port=port), key_prefix=prefix, timeout=10.0, learning_timeout=10.0)
transport = cachewatch.CacheWatchTransport(
    registry=CollectorRegistry(), sinks=[Capture()], store=store, breakpoints="off"
)
client = httpx.Client(base_url=url, transport=transport, headers={"x-api-key": "shared"})
question = " ".join(f"q{i}x" for i in range(80))
body = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 16,
    "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": question, "cache_control": {"type": "ephemeral"}}]}],
}
client.post("/v1/messages", json=body).read()
r = records[-1]
print(json.dumps({"reason": r.extra.get("miss_reason"), "block": r.extra.get("miss_changed_block"),
                  "read": r.usage.cache_read, "write": r.usage.cache_write}))
"""


def _worker(tmp_path: Path, url: str, port: int, prefix: str, system: str) -> dict[str, object]:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    out = subprocess.run(
        [sys.executable, str(script), url, str(port), prefix, system],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_two_processes_diagnose_each_others_writes(redis_port: int, tmp_path: Path) -> None:
    prefix = f"fleet:{time.monotonic_ns()}:"
    system = " ".join(f"s{i}x" for i in range(1500))
    app = create_app(profile="anthropic")
    try:
        with run_in_thread(app) as url:
            first = _worker(tmp_path, url, redis_port, prefix, system)
            assert first["reason"] is None
            assert first["write"] > 0
            # Another process, same conversation, changed system prompt: it finds the first
            # process's write in Redis and names the changed block.
            second = _worker(tmp_path, url, redis_port, prefix, "changed " + system)
            assert second["reason"] == "prefix_changed_system"
            assert second["block"] == "system.0"
            # The provider loses its cache; a third process sends the original request and
            # knows the first process's write was live: evicted, not a cold start.
            app.reset()
            third = _worker(tmp_path, url, redis_port, prefix, system)
            assert third["read"] == 0
            assert third["reason"] == "evicted"
    finally:
        RedisStore(redis.Redis(port=redis_port), key_prefix=prefix).clear()


class _BrokenRedis:
    """A TCP listener that accepts connections and closes them at once, counting them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_broken_redis_costs_one_attempt_then_is_left_alone() -> None:
    broken = _BrokenRedis()
    try:
        # The caller's client retries (redis-py's default: 10 times, with back-off); the
        # store's own request-path client does not.
        store = RedisStore(redis.Redis(port=broken.port), timeout=5.0, retry_after=60.0)
        with pytest.raises(redis.ConnectionError):
            store.get_many([b"k" * 16])
        assert broken.accepted == 1
        # Left alone: every call fails at once without touching the network.
        for call in (
            lambda: store.get_many([b"k" * 16]),
            lambda: store.put_many([(b"k" * 16, _entry())]),
            lambda: store.claim_expired(1e12),
        ):
            with pytest.raises(StoreUnavailable):
                call()
        assert broken.accepted == 1
    finally:
        broken.close()


def test_a_hung_redis_times_out_and_is_used_again_once_it_answers() -> None:
    with redis_server() as port:
        # A timeout well under the pause, and generous enough for a loaded machine.
        store = RedisStore(redis.Redis(port=port), key_prefix="hung:", timeout=1.0, retry_after=0.0)
        store.put_many([(b"a" * 16, _entry())])
        admin = redis.Redis(port=port, socket_timeout=30.0)
        admin.execute_command("CLIENT", "PAUSE", 3_000, "ALL")  # a hung Redis, for 3 s
        with pytest.raises(redis.TimeoutError):
            store.get_many([b"a" * 16])
        assert admin.ping()  # returns once the pause is over
        assert store.get_many([b"a" * 16]) == [_entry()]


def test_the_learned_state_leaves_redis_alone_as_long_as_the_store_says() -> None:
    store = RedisStore(redis.Redis(port=1), retry_after=7.0)
    learner = store.learner()
    assert learner is not None
    assert learner.retry_after == 7.0


def test_a_client_whose_timeouts_cannot_be_set_is_named_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cluster client (or any object that is not a plain redis.Redis) is used as given:
    # the cachewatch logger says once how to bound its calls.
    from cachewatch.planning import _learning_redis_link as link

    class ClusterLike:
        def register_script(self, script: str) -> object:
            return object()

    monkeypatch.setattr(link, "_UNBOUNDED_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="cachewatch"):
        for _ in range(3):
            assert isinstance(link.client_with_timeout(ClusterLike(), 0.05), ClusterLike)
    said = [r.getMessage() for r in caplog.records if "is used as given" in r.getMessage()]
    assert len(said) == 1
    assert "ClusterLike" in said[0]
    assert "socket_timeout" in said[0]


class _DrippingRedis:
    """A server that answers every command with ``+PONG`` one byte at a time, each byte well
    inside the per-read timeout: redis-py's ``socket_timeout`` bounds each ``recv``, so
    without a deadline for the whole call its reply took 7 bytes x the drip."""

    def __init__(self, drip: float) -> None:
        self.drip = drip
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(65536):
                    for byte in b"+PONG\r\n":
                        time.sleep(self.drip)
                        conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def test_a_call_whose_reply_trickles_in_ends_at_its_timeout() -> None:
    # Each byte comes 0.1 s after the last, inside the 0.3 s per-read timeout; the whole
    # reply takes 0.7 s. The call times out (a fault the store counts and backs off from)
    # instead of holding the request for the whole reply.
    from cachewatch.planning._learning_redis_link import client_with_timeout

    dripping = _DrippingRedis(0.1)
    try:
        client = client_with_timeout(redis.Redis(port=dripping.port), 0.3)
        with pytest.raises(redis.TimeoutError):
            client.ping()
    finally:
        dripping.close()
