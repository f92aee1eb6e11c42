"""Smoke test of ``benchmarks/savings.py``: the harness runs small workloads end to end.

It checks that the numbers are sensible (no caching reads nothing, a system marker is
read on later chat turns, a cold fan-out writes once per request), not the SPEC bar:
that is the benchmark's job.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from _bench import load_benchmark


@pytest.fixture(scope="module")
def savings() -> ModuleType:
    return load_benchmark("savings", "cachewatch_savings_benchmark")


def test_chat_with_a_long_system_prompt(savings: ModuleType) -> None:
    workload = savings.WORKLOADS["chat (long system)"]
    small = {"turns": 3, "system_tokens": 1_500}
    results = {s: savings.run_workload(workload, s, **small) for s in ("none", "system", "sys+last", "auto")}

    none = results["none"].bill
    assert none.requests == 3
    assert none.read == none.w5m == none.w1h == 0
    assert none.cost == none.input > 3 * 1_500

    system = results["system"].bill
    assert system.w5m >= 1_500  # the first turn writes the system prompt...
    assert system.read >= 2 * 1_500  # ...and the next two read it
    assert [s.bill.read > 0 for s in results["system"].steps] == [False, True, True]
    assert system.cost < none.cost

    # sys+last also reads the previous turn; auto records the markers it placed.
    assert results["sys+last"].bill.read > system.read
    assert all(step.markers for step in results["auto"].steps)
    assert results["auto"].bill.cost < none.cost
    # Markers never change what is billed in total, only how.
    assert len({r.bill.prompt for r in results.values()}) == 1
    assert savings.best_fixed(results) == "sys+last"


def test_cold_fan_out_writes_once_per_request(savings: ModuleType) -> None:
    workload = savings.WORKLOADS["fan-out (cold)"]
    result = savings.run_workload(workload, "system", waves=2, width=4, system_tokens=1_500)
    first, second = result.steps[:4], result.steps[4:]
    # All four were in flight before any response started: none could read the others' write.
    assert all(s.bill.read == 0 and s.bill.w5m >= 1_500 for s in first)
    assert all(s.bill.read >= 1_500 and s.bill.w5m == 0 for s in second)


def test_fixed_strategies_are_request_transforms(savings: ModuleType) -> None:
    tool_result = {"type": "tool_result", "tool_use_id": "t1", "content": "rows"}
    request: dict[str, Any] = {
        "model": "m",
        "system": "long system",
        "messages": [
            {"role": "user", "content": "please use the tool"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}]},
            {"role": "user", "content": [tool_result]},
        ],
    }
    marker = {"type": "ephemeral"}

    assert savings.apply_strategy("none", request) == request
    top = savings.apply_strategy("top-level", request)
    assert top["cache_control"] == marker
    assert top["messages"] == request["messages"]

    system = savings.apply_strategy("system", request)
    assert system["system"] == [{"type": "text", "text": "long system", "cache_control": marker}]
    assert system["messages"] == request["messages"]

    last = savings.apply_strategy("sys+last", request)
    assert last["messages"][2]["content"][0]["cache_control"] == marker

    # LiteLLM's "last user message": tool results are role "tool" there, so the marker
    # goes on the person's turn, not on the tool result.
    litellm = savings.apply_strategy("litellm", request)
    assert litellm["messages"][0]["content"] == [
        {"type": "text", "text": "please use the tool", "cache_control": marker}
    ]
    assert "cache_control" not in litellm["messages"][2]["content"][0]
    assert request["system"] == "long system"  # the caller's request is not mutated


def test_auto_fan_out_waves_cause_no_internal_fault(
    savings: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    """Several in-flight writers of one prefix once crashed the miss diagnosis (max() over entries)."""
    workload = savings.WORKLOADS["fan-out (cold)"]
    with caplog.at_level("WARNING", logger="cachewatch"):
        savings.run_workload(workload, "auto", waves=3, width=8, system_tokens=1_500)
    assert not [r for r in caplog.records if "internal fault" in r.getMessage()]
