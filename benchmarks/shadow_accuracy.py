"""How close the shadow estimate comes to what ``auto`` really costs, on the same traffic.

Issue 17's bar: on the demo's workloads and the savings benchmark's workloads, the shadow
estimate of ``auto``'s cost is within 10 % of what ``auto`` really costs against the emulator.

    .venv/bin/python benchmarks/shadow_accuracy.py [--only NAME ...]

Each workload runs twice on a fresh emulator, through the real SDK wrapped by
:func:`cachewatch.wrap`:

* once with ``breakpoints="auto"``: what the emulator billed is ``auto``'s real cost;
* once with ``breakpoints="shadow"``: the requests go out unchanged (the emulator bills
  them uncached) and the shadow estimate says what ``auto`` would have been billed.

Savings workloads (``benchmarks/savings.py``, manual clock) are priced in token units
(input 1, 5m write 1.25, 1h write 2, read 0.1); the demo's (``cachewatch demo``, real
clock, the anthropic and openai SDKs, Anthropic and DashScope hosts) in USD with the
shipped price table, output included. The table prints, per workload, auto's real cost,
the shadow estimate, the error ``(estimate - real) / real`` and the bar. The exit code is
always 0: this is a benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry

BAR = 0.10


def _savings() -> ModuleType:
    path = Path(__file__).resolve().parent / "savings.py"
    spec = importlib.util.spec_from_file_location("cachewatch_savings_benchmark", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def savings_rows(only: list[str] | None = None, **overrides: Any) -> list[tuple[str, float, float]]:
    """(workload, auto's real cost, shadow estimate) in token units, per savings workload."""
    savings = _savings()
    rows = []
    for workload in savings.WORKLOADS.values():
        if only and not any(o.lower() in workload.name.lower() for o in only):
            continue
        auto = savings.run_workload(workload, "auto", **overrides)
        shadow = savings.run_workload(workload, "shadow", **overrides)
        assert shadow.shadow is not None
        assert shadow.bill.prompt == auto.bill.prompt  # the same traffic
        rows.append((workload.name, auto.bill.cost, shadow.shadow.cost))
    return rows


def units(usage: Any) -> float:
    """Net input cost in token units (input 1, 5m write 1.25, 1h write 2, read 0.1)."""
    return usage.input + 1.25 * usage.cache_write_5m + 2.0 * usage.cache_write_1h + 0.1 * usage.cache_read


class _Money:
    """A sink: real and shadow-estimated cost (USD) and net input cost (units) of its records."""

    name = "money"

    def __init__(self) -> None:
        self.real = self.shadow = self.real_units = self.shadow_units = 0.0
        self._lock = threading.Lock()

    def start(self, info: Any) -> None:
        return None

    def finish(self, state: object | None, record: Any) -> None:
        with self._lock:
            if record.cost is not None:
                self.real += record.cost.total
            if record.usage is not None:
                self.real_units += units(record.usage)
            estimate = record.shadow
            if estimate is not None:
                self.shadow_units += units(estimate.usage)
                if estimate.cost is not None:
                    self.shadow += estimate.cost.total


def demo_rows(only: list[str] | None = None) -> tuple[list[tuple[str, float, float]], ...]:
    """Per ``cachewatch demo`` workload, (workload, auto's real cost, shadow estimate): in USD
    (output included), and in token units (net input cost)."""
    from cachewatch.cli import _demo

    names = [n for n in _demo.WORKLOADS if not only or any(o.lower() in f"demo: {n}".lower() for o in only)]
    money: dict[tuple[str, str], _Money] = {}
    for mode in ("auto", "shadow"):
        with _demo._emulators() as (anthropic_url, dashscope_url):
            sinks = {name: money.setdefault((mode, name), _Money()) for name in _demo.WORKLOADS}
            clients = _demo._clients(mode, anthropic_url, dashscope_url, CollectorRegistry(), sinks)
            for name in names:
                _demo._RUNNERS[name](clients[name], "run-0")
    usd = [(f"demo: {n}", money[("auto", n)].real, money[("shadow", n)].shadow) for n in names]
    tokens = [(f"demo: {n}", money[("auto", n)].real_units, money[("shadow", n)].shadow_units) for n in names]
    return usd, tokens


def error(real: float, estimate: float) -> float:
    return (estimate - real) / real if real else 0.0


def print_table(rows: list[tuple[str, float, float]], unit: str, money: bool = False) -> bool:
    ok = True
    head = f"{'workload':<30}{'auto real':>14}{'shadow est.':>14}{'error':>9}  bar"
    print(f"{unit}\n")
    print(head)
    print("-" * len(head))
    for name, real, estimate in rows:
        err = error(real, estimate)
        passed = abs(err) <= BAR
        ok &= passed
        fmt = "{:>14,.4f}" if money else "{:>14,.0f}"
        print(
            f"{name:<30}{fmt.format(real)}{fmt.format(estimate)}{err:>+8.1%}  {'PASS' if passed else 'FAIL'}"
        )
    print()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only workloads whose name contains this")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ok = print_table(savings_rows(args.only), "Savings workloads: net input cost, token units")
    usd, tokens = demo_rows(args.only)
    ok &= print_table(usd, "Demo workloads: cost in USD (output included)", money=True)
    ok &= print_table(tokens, "Demo workloads: net input cost, token units")
    print(
        f"overall: {'PASS' if ok else 'FAIL'} (bar: |error| <= {BAR:.0%}; {time.perf_counter() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
