"""Instructions per request inside each stage of cachewatch's defaults, counted by callgrind.

    .venv/bin/python benchmarks/phase_instructions.py [--requests 20] [--stage NAME ...]

(needs Debian's ``valgrind`` and ``gcc``, as ``peers_instructions.py``; about 2 minutes
for the default stages.) One process under callgrind with collection off; the
Anthropic JSON request of ``peers.py`` (its mock upstream, a TracerProvider), through
``cachewatch.wrap(client)`` with no options. For each stage in turn, the function is
replaced by a wrapper that switches collection on at its outermost entry and off at
its exit (callgrind's client requests, through the helper of ``peers_instructions.py``),
``--requests`` requests run, and the count is divided by them. A stage's figure is
inclusive (what it calls counts) and holds the wrapper's two switches (~3k instructions
per call; a stage called n times a request carries n of them). Stages are
``module:qualified.name``, looked up where the caller finds them: a function imported by
name is replaced in the importing module (``cachewatch.planning._policy:ask``).

Where ``peers_instructions.py`` says how much cachewatch adds, this says where.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers_instructions import callgrind_dumps  # noqa: E402

STAGES = (
    "cachewatch.transport._transport:CacheWatchTransport.handle_request",
    "cachewatch.engine._engine:Engine.begin",
    "cachewatch.planning._planner:Planner.plan",
    "cachewatch.planning._planner:walk_layout",
    "cachewatch.planning._policy:_place",
    "cachewatch.planning._policy:ask",
    "cachewatch.planning._learning_memory:MemoryLearner.sight",
    "cachewatch.planning._learning_memory:MemoryLearner.conversation",
    "cachewatch.engine._engine:Engine.start_sinks",
    "cachewatch.engine._exchange:Exchange._finish",
    "cachewatch.observing._observer:ResponseObserver.result",
    "cachewatch.diagnosis._diagnoser:Diagnoser.after",
    "cachewatch.engine._engine:Engine.finish_sinks",
)


def _swap(stage: str, make: Callable[[Any], Any]) -> Callable[[], None]:
    """Replace ``stage`` by ``make(original)``; returns what puts the original back."""
    module, qualified = stage.split(":")
    owner: Any = importlib.import_module(module)
    *path, name = qualified.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    return lambda: setattr(owner, name, original)


def child(helper: str, stages: list[str], requests: int) -> None:
    import peers

    import cachewatch

    lib = ctypes.CDLL(helper)
    lib.cg_dump.argtypes = [ctypes.c_char_p]
    otel = peers.Otel()
    clients = {k: cachewatch.wrap(c) for k, c in peers.make_clients().items()}
    call = peers.request_fns(clients)["anthropic-json"]
    for _ in range(100):
        call()
    depth = [0]

    def counted(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                lib.cg_toggle()
            depth[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    lib.cg_toggle()

        return wrapper

    for stage in stages:
        restore = _swap(stage, counted)
        for _ in range(10):
            call()
        lib.cg_zero()
        for _ in range(requests):
            call()
        lib.cg_dump(stage.encode())
        restore()
        otel.clear()


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2].split(","), int(argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--stage", action="append", help="module:qualified.name (repeatable)")
    args = p.parse_args(argv)
    stages = args.stage or list(STAGES)
    dumps, stderr = callgrind_dumps(__file__, [",".join(stages), str(args.requests)])
    counts = {trigger: total / args.requests for trigger, total in dumps}
    if set(counts) != set(stages):
        raise RuntimeError(f"callgrind gave no counts for some stages:\n{stderr[-2000:]}")
    print(
        f"anthropic-json, cachewatch defaults + TracerProvider: instructions per request, {args.requests} requests"
    )
    for stage in stages:
        print(f"{counts[stage]:>12,.0f}  {stage}")


if __name__ == "__main__":
    main(sys.argv[1:])
