"""``cachewatch proxy --redis URL``: proxies (and a proxy's workers) learn as one.

Real processes throughout: ``cachewatch proxy`` subprocesses started by the CLI, a real
redis-server, the emulator (``benchmarks/fleet.py``'s, recorded and gated) as the upstream,
requests sent with httpx as raw JSON bytes with one API key, so every proxy shares the
provider's cache as the processes of one deployment do.

* Two proxies on one Redis: after proxy A found that per-user system prompts are never
  read again, proxy B writes none; a cold shared prompt arriving at both at once (the
  emulator holds the burst until both requests have arrived) is written once and read by
  both afterwards. Redis shut down: every request (JSON and streamed) still goes through
  byte-correct (the body the emulator received is the client's, markers aside; the bytes
  the client got are the ones the emulator sent) and each proxy counts the fault in
  ``cachewatch_internal_errors_total{stage="learner"}``.
* The control, the same proxies without ``--redis``: B pays for its own first per-user
  prompt and both write the cold prompt.
* ``--workers 2 --redis``: per-user requests sent until both workers served some; the
  first request of the family is the only one that writes, whichever worker served it.
* Without the ``redis`` package, ``--redis`` fails with one error naming the extra.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from _bench import load_benchmark
from _redis import redis_server

FAQ_TOKENS = 3_000


@pytest.fixture(scope="module")
def fleet() -> ModuleType:
    return load_benchmark("fleet", "cachewatch_fleet_benchmark_proxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A ``cachewatch proxy`` subprocess on a free port."""

    def __init__(self, upstream: str, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "cachewatch.cli", "proxy", "--upstream", upstream,
                "--listen", f"127.0.0.1:{self.port}", "--provider", "anthropic", *args,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )  # fmt: skip

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.1)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=30).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        assert "Traceback" not in self.log.read_text()


@dataclass
class Sent:
    """One request through a proxy, as its client saw it."""

    id: str
    body: dict[str, Any]
    status: int
    content: bytes
    read: int
    written: int


_SEQ = iter(range(1, 1_000_000))


def _send(proxy: Proxy, body: dict[str, Any], *, stream: bool = False) -> Sent:
    rid = f"p{next(_SEQ)}"
    sent_body = {**body, "stream": True} if stream else body
    response = httpx.post(
        f"http://127.0.0.1:{proxy.port}/v1/messages",
        content=orjson.dumps(sent_body),
        headers={
            "x-api-key": "sk-proxy-fleet",
            "anthropic-version": "2023-06-01",
            "content-type": "application/json",
            "x-fleet-id": rid,
        },
        timeout=60,
    )
    usage: dict[str, Any] = {}
    if stream:
        for line in response.content.splitlines():
            if line.startswith(b"data:"):
                event = orjson.loads(line[5:])
                if event.get("type") == "message_start":
                    usage = event["message"]["usage"]
    elif response.status_code == 200:
        usage = orjson.loads(response.content)["usage"]
    return Sent(
        rid,
        sent_body,
        response.status_code,
        response.content,
        usage.get("cache_read_input_tokens") or 0,
        usage.get("cache_creation_input_tokens") or 0,
    )


def _byte_correct(fleet: ModuleType, recorder: Any, sent: list[Sent]) -> None:
    for s in sent:
        assert s.status == 200, s.content[:300]
        # The bytes the client got are the bytes the emulator sent.
        assert hashlib.sha256(s.content).hexdigest() == recorder.responses[s.id]
        # The request the emulator received is the client's, with cachewatch's markers at most.
        assert fleet.strip_markers(orjson.loads(recorder.requests[s.id])) == s.body


@pytest.fixture
def two_proxies(
    fleet: ModuleType, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Proxy, Proxy, Any, Any, int]]:
    """(proxy A, proxy B, recorder, gate, redis port); ``--redis`` when the param is True."""
    shared: bool = request.param
    with redis_server() as port, fleet.serve_emulator() as (url, recorder, gate):
        # A loaded test machine is no fault: only a dead Redis is.
        extra = ["--redis", f"redis://127.0.0.1:{port}/0", "--redis-timeout", "10"] if shared else []
        proxies = [Proxy(url, tmp_path / f"proxy-{name}.log", *extra) for name in "ab"]
        try:
            for proxy in proxies:
                proxy.wait_ready()
            yield proxies[0], proxies[1], recorder, gate, port
        finally:
            for proxy in proxies:
                proxy.stop()


def _burst(a: Proxy, b: Proxy, gate: Any, body_a: dict[str, Any], body_b: dict[str, Any]) -> list[Sent]:
    """One request to each proxy at once; the emulator answers once both have arrived."""
    gate.arm(2)
    with ThreadPoolExecutor(2) as pool:
        burst = list(pool.map(lambda pair: _send(*pair), [(a, body_a), (b, body_b)]))
    gate.disarm()
    assert gate.timeouts == 0  # the burst really overlapped
    return burst


@pytest.mark.parametrize("two_proxies", [True], indirect=True, ids=["redis"])
def test_two_proxies_on_one_redis_learn_together_and_survive_redis_dying(
    fleet: ModuleType, two_proxies: tuple[Proxy, Proxy, Any, Any, int]
) -> None:
    a, b, recorder, gate, port = two_proxies
    load = fleet.Workloads(seed=3, faq_tokens=FAQ_TOKENS)
    alone = [_send(a, load.per_user()) for _ in range(3)]
    assert alone[0].written > 0  # proxy A writes its first per-user prompt...
    assert alone[-1].written == 0  # ...learns that nobody reads them, and stops
    other = [_send(b, load.per_user()) for _ in range(2)]
    assert [s.written for s in other] == [0, 0]  # proxy B knows it already

    burst = _burst(a, b, gate, load.faq(), load.faq())
    assert sum(1 for s in burst if s.written) == 1  # the cold shared prompt: written once
    assert max(s.written for s in burst) >= FAQ_TOKENS
    later = [_send(proxy, load.faq()) for proxy in (b, a)]
    assert all(s.read >= FAQ_TOKENS and s.written == 0 for s in later)
    assert a.metric("cachewatch_internal_errors_total") == b.metric("cachewatch_internal_errors_total") == 0

    redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
    after: list[Sent] = []
    faq_after: list[Sent] = []
    for proxy in (a, b):
        after.append(_send(proxy, load.per_user()))  # meets the dead Redis: planned locally
        faq_after += [_send(proxy, load.faq(), stream=stream) for stream in (True, False)]
    # Each proxy goes on learning alone: its fresh local state marks the shared prompt,
    # which is still cached at the provider.
    assert all(s.read >= FAQ_TOKENS for s in faq_after)
    after += faq_after
    _byte_correct(fleet, recorder, alone + other + burst + later + after)
    for proxy in (a, b):
        assert proxy.metric("cachewatch_internal_errors_total", stage="learner") >= 1  # counted, not raised


@pytest.mark.parametrize("two_proxies", [False], indirect=True, ids=["alone"])
def test_without_redis_each_proxy_pays_for_what_the_other_learned(
    fleet: ModuleType, two_proxies: tuple[Proxy, Proxy, Any, Any, int]
) -> None:
    a, b, recorder, gate, _ = two_proxies
    load = fleet.Workloads(seed=3, faq_tokens=FAQ_TOKENS)
    alone = [_send(a, load.per_user()) for _ in range(3)]
    other = [_send(b, load.per_user()) for _ in range(2)]
    assert other[0].written > 0  # B writes its own first per-user prompt
    burst = _burst(a, b, gate, load.faq(), load.faq())
    assert [s.written >= FAQ_TOKENS for s in burst] == [True, True]  # both write the cold prompt
    _byte_correct(fleet, recorder, alone + other + burst)


def _planning_pids(client: redis.Redis) -> set[str]:
    """The processes whose plans sighted a prefix (each sighting keeps its ticket: pid.tag.n)."""
    pids: set[str] = set()
    for name in client.scan_iter(match="cachewatch:fp:learn:p:*"):
        ticket = client.hget(name, "tk")
        if ticket:
            pids.add(ticket.decode().partition(".")[0])
    return pids


def test_the_workers_of_one_proxy_share_what_they_learn(fleet: ModuleType, tmp_path: Path) -> None:
    load = fleet.Workloads(seed=4)
    with redis_server() as port, fleet.serve_emulator() as (url, recorder, _):
        redis_url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(redis_url)
        proxy = Proxy(
            url, tmp_path / "proxy.log", "--workers", "2", "--redis", redis_url, "--redis-timeout", "10"
        )
        try:
            proxy.wait_ready()
            sent: list[Sent] = []
            # Concurrent per-user requests until both workers have planned some (bounded).
            with ThreadPoolExecutor(4) as pool:
                for _ in range(25):
                    bodies = [load.per_user() for _ in range(4)]
                    sent += list(pool.map(lambda body: _send(proxy, body), bodies))
                    if len(_planning_pids(client)) >= 2:
                        break
            assert len(_planning_pids(client)) == 2, "every request went to one worker"
            # The first sighting of the family is written; every later one, on either worker,
            # sees the shared statistics (sightings are counted atomically in Redis) and is
            # not. Learning alone, each worker would write its own first one.
            assert sum(1 for s in sent if s.written) == 1, [s.written for s in sent]
            _byte_correct(fleet, recorder, sent)
        finally:
            proxy.stop()


_WITHOUT_REDIS = """
import sys
sys.modules["redis"] = None  # as if not installed
from cachewatch.cli import main
from cachewatch.proxy import app_from_config
from cachewatch.proxy._config import proxy_config
try:
    app_from_config(proxy_config("http://127.0.0.1:9", redis="redis://127.0.0.1:6379/0"), logger=object())
except ImportError as exc:
    print(exc)
sys.exit(main(["proxy", "--upstream", "http://127.0.0.1:9", "--redis", "redis://127.0.0.1:6379/0"]))
"""


def test_without_the_redis_extra_the_proxy_says_which_extra_to_install() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_REDIS], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "--redis needs the optional package redis: pip install 'cachewatch[redis]'" in result.stdout
    assert result.stderr.strip().splitlines() == [
        "cachewatch proxy --redis needs the optional package redis: pip install 'cachewatch[redis]'"
    ]
