"""Issue 17's bar: the shadow estimate of ``auto``'s cost is within 10 % of what ``auto`` really costs.

The same traffic runs twice against a fresh emulator, through the real anthropic (and, for
the demo's DashScope chat, openai) SDK wrapped by :func:`cachewatch.wrap`: once with
``breakpoints="auto"`` (what the emulator billed is auto's real cost) and once with
``breakpoints="shadow"`` (the requests go out unchanged; the estimate says what auto would
have been billed). The workloads are the savings benchmark's (``benchmarks/savings.py``,
on a manual clock, shortened to keep this test to seconds) and the demo's
(``cachewatch demo``). ``benchmarks/shadow_accuracy.py`` prints the full-size table.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "shadow_accuracy.py"
BAR = 0.10

#: Savings workloads, shortened: chats, tool loops, shared documents, a cold fan-out,
#: DashScope across a TTL break, several tenants' keys, a batch and mixed traffic.
SHORT: dict[str, dict[str, Any]] = {
    "chat (long system)": {"turns": 6},
    "agent tool loop": {"tasks": 3},
    "document Q&A": {"questions": 6, "long_gaps": (3,)},
    "fan-out (cold)": {"waves": 2, "width": 4},
    "DashScope chat": {"turns": 8, "break_before": 4},
    "multi-tenant": {"tenants": 2, "turns": 3},
    "batch job": {"items": 15},
    "mixed chat product": {"sessions": 8},
}


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cachewatch_shadow_accuracy", _PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(SHORT))
def test_savings_workload(accuracy: ModuleType, name: str) -> None:
    savings = accuracy._savings()
    workload = savings.WORKLOADS[name]
    auto = savings.run_workload(workload, "auto", **SHORT[name])
    shadow = savings.run_workload(workload, "shadow", **SHORT[name])
    assert shadow.bill.prompt == auto.bill.prompt  # the same traffic, billed in total alike
    assert shadow.bill.read == 0  # sent unchanged: no marker, nothing read
    assert shadow.shadow is not None
    assert shadow.shadow.requests == auto.bill.requests
    real, estimate = auto.bill.cost, shadow.shadow.cost
    assert real < shadow.bill.cost or name == "fan-out (cold)"  # auto saves (not on a cold wave)
    assert abs(estimate - real) <= BAR * real, (name, real, estimate)


def test_demo_workloads(accuracy: ModuleType) -> None:
    usd, tokens = accuracy.demo_rows()
    assert [name for name, *_ in usd] == [
        "demo: support chat",
        "demo: agent tool loop",
        "demo: document Q&A",
        "demo: DashScope chat",
        "demo: timestamped prompt",
    ]
    for name, real, estimate in usd + tokens:
        assert real > 0, name
        assert abs(estimate - real) <= BAR * real, (name, real, estimate)
