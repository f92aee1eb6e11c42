"""A fleet: three worker processes, one application, the learned state in a real redis-server.

Each worker is a subprocess (``benchmarks/fleet.py``'s harness) with a real
``anthropic.Anthropic`` client wrapped by ``cachewatch.wrap(client, store=RedisStore(url=...))``,
talking to the same emulator (a real HTTP server in this process) with the same API key,
so the workers share the provider's cache as the processes of one deployment do. The
test drives them round by round; the workers of a round send at the same time.

What a fleet must get right, checked on the emulator's usage and each worker's counters:

* what one process learns reaches the others: after one worker found that per-user
  system prompts are never read again, the others write none;
* a shared prefix arriving cold at every process at once is written once by the fleet
  (the emulator holds the burst until all of it has arrived, so the overlap does not
  depend on timing) and read by every later request, whichever process sends it;
* Redis shut down in the middle of a round: every request is still served byte-correct
  (the body the emulator received is the caller's, markers aside; the response bytes
  the SDK got are the ones the emulator sent), every worker counts the fault in
  ``cachewatch_internal_errors_total{stage="learner"}`` and goes on learning locally
  (each writes at most its first per-user prompt, then stops again).

A control runs the first phases with per-process learning (``RedisStore(learning=False)``):
there every process pays for its own first profile and every process writes the burst.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from _bench import load_benchmark
from _redis import redis_server

N = 3
FAQ_TOKENS = 3_000


@pytest.fixture(scope="module")
def fleet() -> ModuleType:
    return load_benchmark("fleet", "cachewatch_fleet_benchmark")


@pytest.fixture
def running(fleet: ModuleType, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """(fleet, recorder, gate, redis port) for ``shared`` (the param) learning."""
    shared: bool = request.param
    with redis_server() as port, fleet.serve_emulator() as (url, recorder, gate):
        workers = fleet.Fleet(
            N,
            url,
            f"redis://127.0.0.1:{port}/0",
            shared=shared,
            key_prefix="fleet-test:",
            learning_timeout=10.0,  # a loaded machine is no fault: only a dead Redis is
            log_dir=tmp_path,
        )
        with workers:
            yield workers, recorder, gate, port


def _per_user_then_burst(
    fleet: ModuleType, workers: Any, gate: Any
) -> tuple[list[Any], list[Any], list[Any]]:
    """Worker 0 alone meets per-user traffic; then everyone; then a cold shared prompt, at once."""
    load = fleet.Workloads(seed=1, faq_tokens=FAQ_TOKENS)
    alone = workers.round({0: [("per-user", load.per_user()) for _ in range(3)]})
    everyone = workers.round({i: [("per-user", load.per_user()) for _ in range(2)] for i in range(N)})
    gate.arm(N)
    burst = workers.round({i: [("faq", load.faq())] for i in range(N)})
    gate.disarm()
    assert gate.timeouts == 0  # the burst really overlapped
    return alone, everyone, burst


def _served_byte_correct(fleet: ModuleType, recorder: Any, results: list[Any]) -> None:
    for r in results:
        assert r.error is None, r.error
        assert r.status == 200
        # The response bytes the SDK received are the bytes the emulator sent.
        assert r.sha == recorder.responses[r.id]
        # The request the emulator received is the caller's, with cachewatch's markers at most.
        assert fleet.strip_markers(orjson.loads(recorder.requests[r.id])) == r.body


@pytest.mark.parametrize("running", [True], indirect=True, ids=["shared"])
def test_a_fleet_learns_together_writes_a_shared_prefix_once_and_survives_redis_dying(
    fleet: ModuleType, running: Any
) -> None:
    workers, recorder, gate, port = running
    load = fleet.Workloads(seed=2, faq_tokens=FAQ_TOKENS)
    alone, everyone, burst = _per_user_then_burst(fleet, workers, gate)

    # Worker 0 writes its first per-user prompt, then learns nobody reads them and stops.
    assert alone[0].written > 0
    assert alone[-1].written == 0
    # What it learned reaches the other processes: none of them writes a per-user prompt.
    assert [r.written for r in everyone] == [0] * len(everyone)

    # The cold shared prompt is written once by the fleet, while the others skip it in flight.
    writers = [r for r in burst if r.written]
    assert len(writers) == 1
    assert writers[0].written >= FAQ_TOKENS
    # Interleaved traffic: every later question, on every process, reads it; nobody writes.
    faq = fleet.Workloads(seed=1, faq_tokens=FAQ_TOKENS)  # the burst's system prompt
    later = workers.round(
        {i: [("faq", faq.faq()), ("per-user", load.per_user()), ("faq", faq.faq())] for i in range(N)}
    )
    assert all(r.read >= FAQ_TOKENS for r in later if r.workload == "faq")
    assert [r.written for r in later] == [0] * len(later)
    before_kill = workers.metrics()
    assert all(m["internal_errors"] == {} for m in before_kill)  # learned through Redis, no fallback
    assert all(m["learner"] == "RedisLearner" for m in before_kill)

    # Redis dies in the middle of a round.
    workers.dispatch({i: [("per-user", load.per_user()), ("faq", faq.faq())] for i in range(N)})
    redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
    killed = workers.collect()
    after = [workers.round({i: [("per-user", load.per_user())] for i in range(N)}) for _ in range(2)]
    last = workers.round({i: [("faq", faq.faq())] for i in range(N)})

    everything = alone + everyone + burst + later + killed + [r for rs in after for r in rs] + last
    _served_byte_correct(fleet, recorder, everything)
    metrics = workers.metrics()
    for m in metrics:
        assert m["internal_errors"].get("learner", 0) >= 1  # counted, not raised
        assert m["learner_faults"] >= 1
        assert set(m["internal_errors"]) <= {"learner", "diagnosis"}  # nothing else broke
    # Local learning takes over: each process writes at most its own first per-user prompt
    # after the shared state is gone, then stops again.
    since_kill = [r for r in killed + after[0] + after[1] if r.workload == "per-user"]
    per_worker = Counter(r.worker for r in since_kill if r.written)
    assert all(n <= 1 for n in per_worker.values()), per_worker
    assert [r.written for r in after[1]] == [0] * N
    # The shared prompt is still cached at the provider: read, whoever asks.
    assert all(r.read >= FAQ_TOKENS for r in last)

    # The workers' counters agree with what the emulator billed.
    for i, m in enumerate(metrics):
        mine = [r for r in everything if r.worker == i]
        assert m["tokens"].get("cache_write_5m", 0) + m["tokens"].get("cache_write_1h", 0) == sum(
            r.written for r in mine
        )
        assert m["tokens"].get("cache_read", 0) == sum(r.read for r in mine)


@pytest.mark.parametrize("running", [False], indirect=True, ids=["local"])
def test_without_the_shared_state_every_process_pays_for_what_another_already_learned(
    fleet: ModuleType, running: Any
) -> None:
    # The control: the same traffic with each process learning alone.
    workers, recorder, gate, _ = running
    alone, everyone, burst = _per_user_then_burst(fleet, workers, gate)
    _served_byte_correct(fleet, recorder, alone + everyone + burst)
    assert alone[0].written > 0
    assert alone[-1].written == 0
    # Workers 1 and 2 write their first per-user prompt, as worker 0 did.
    first_writes = {r.worker for r in everyone if r.written}
    assert first_writes == {1, 2}
    # Every process writes the cold shared prompt.
    assert [r.written >= FAQ_TOKENS for r in burst] == [True] * N
    assert all(m["learner"] == "MemoryLearner" for m in workers.metrics())
