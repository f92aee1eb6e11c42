"""Code footprint per request: how much distinct Python code each variant runs on top of the bare SDK.

    .venv-bench/bin/python benchmarks/peers_footprint.py [--case anthropic-json]

(run it with ``.venv-bench``'s interpreter, which ``benchmarks/peers.py`` builds.)

Instruction counts (``peers_instructions.py``) treat every instruction alike, yet in µs
cachewatch's added instructions cost about 1.6x what the SDK's own span code's cost
(BENCHMARKS.md, "Why µs and instructions disagree"). The difference is how spread out
the code is: a line of Python run once per request finds its bytecode, inline caches and
the objects it touches out of the CPU caches, a line run in a loop does not. This counts,
for one warmed-up request of the ``peers.py`` mock, the distinct source lines executed
(``sys.settrace`` line events, keyed by code object and line) and the distinct code
objects called, beyond those of the bare client, and how many times each runs. Like the
instruction counts these figures repeat exactly, so they can be compared between
branches.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers

import cachewatch

Key = tuple[CodeType, int]


def trace(call: Callable[[], None]) -> Counter[Key]:
    """Line events of one call, per (code object, line)."""
    lines: Counter[Key] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            lines[frame.f_code, frame.f_lineno] += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return lines


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="anthropic-json")
    args = p.parse_args(argv)
    otel = peers.Otel()
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "bare": peers.make_clients,
        "sdk": lambda: peers.make_clients({"tracer_provider": otel.tracer_provider}),
        "cachewatch": lambda: {k: cachewatch.wrap(c) for k, c in peers.make_clients().items()},
        "off": lambda: {k: cachewatch.wrap(c, breakpoints="off") for k, c in peers.make_clients().items()},
        "no-learning": lambda: {
            k: cachewatch.wrap(c, learning=False, diagnosis=False) for k, c in peers.make_clients().items()
        },
    }
    traced: dict[str, Counter[Key]] = {}
    for name, make in makers.items():
        call = peers.request_fns(make())[args.case]
        for _ in range(30):
            call()
        traced[name] = trace(call)
        otel.clear()
    bare = traced["bare"]
    bare_codes = {code for code, _ in bare}
    print(f"{args.case}, with a TracerProvider: per request, beyond the bare client")
    print(f"{'variant':12} {'lines':>7} {'line runs':>10} {'runs/line':>10} {'functions':>10}")
    print(
        f"{'bare (all)':12} {len(bare):>7,} {sum(bare.values()):>10,} {sum(bare.values()) / len(bare):>10.2f}"
    )
    for name in list(makers)[1:]:
        extra = {k: n for k, n in traced[name].items() if k not in bare}
        runs = sum(extra.values())
        codes = {code for code, _ in extra if code not in bare_codes}
        print(f"{name:12} {len(extra):>7,} {runs:>10,} {runs / max(len(extra), 1):>10.2f} {len(codes):>10,}")


if __name__ == "__main__":
    main(sys.argv[1:])
