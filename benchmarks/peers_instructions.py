"""Instructions per request through the real SDKs: cachewatch's defaults next to the SDK's own spans.

    .venv/bin/python benchmarks/peers_instructions.py [--case anthropic-json] [--rounds 6] [--batch 20]

(needs Debian's ``valgrind`` and ``gcc``; the callgrind client-request header comes with
the valgrind package.)

The wall-clock figures of ``benchmarks/peers.py`` swing by tens of µs on a shared VM;
instruction counts do not. This counts them for the cases of ``peers.py`` (its mock
upstream, clients and requests), in **one** process under callgrind: every variant is a
client of its own (cachewatch wraps a client, it patches nothing global), they are
warmed up together, and then, for ``--rounds`` rounds in a shuffled order, each runs a
batch of requests with collection switched on around that batch only (a three-line C
helper, built on the fly, issues callgrind's toggle, zero and dump requests). A variant's
figure is its mean per request over its batches; "added" is that minus the bare client's.
One process for every variant keeps the interpreter's memory layout, which alone moves
a separate-process count by tens of thousands of instructions, the same for all.

Variants with a TracerProvider (``peers.Otel``: a global SDK provider, a
SimpleSpanProcessor and an in-memory exporter, emptied after each round): ``bare``;
``sdk`` (the anthropic SDK's own spans, ``open_telemetry=provider``); ``cachewatch``
(``cachewatch.wrap(client)``); ``off`` (``breakpoints="off"``); ``no-learning``
(``learning=False, diagnosis=False``). Without a provider (``--no-provider``, its own
process): ``bare``, ``cachewatch`` and ``off``, which then make no span.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HELPER_C = (
    "#include <valgrind/callgrind.h>\n"
    "void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }\n"
    "void cg_zero(void) { CALLGRIND_ZERO_STATS; }\n"
    "void cg_dump(const char *s) { CALLGRIND_DUMP_STATS_AT(s); }\n"
)
WITH_PROVIDER = ("bare", "sdk", "cachewatch", "off", "no-learning")
WITHOUT_PROVIDER = ("bare", "cachewatch", "off")
OPTIONS: dict[str, dict[str, Any]] = {
    "cachewatch": {},
    "off": {"breakpoints": "off"},
    "no-learning": {"learning": False, "diagnosis": False},
}


def child(helper: str, variants: list[str], case: str, batch: int, rounds: int, provider: bool) -> None:
    sys.path.insert(0, str(HERE))
    import peers

    import cachewatch

    lib = ctypes.CDLL(helper)
    lib.cg_dump.argtypes = [ctypes.c_char_p]
    otel = peers.Otel() if provider else None
    calls = {}
    for variant in variants:
        if variant == "bare":
            clients = peers.make_clients()
        elif variant == "sdk":
            assert otel is not None
            clients = peers.make_clients({"tracer_provider": otel.tracer_provider})
        else:
            clients = {k: cachewatch.wrap(c, **OPTIONS[variant]) for k, c in peers.make_clients().items()}
        calls[variant] = peers.request_fns(clients)[case]
    for _ in range(50):
        for variant in variants:
            calls[variant]()
    rng = random.Random(1)
    for r in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for variant in order:
            call = calls[variant]
            lib.cg_zero()
            lib.cg_toggle()
            for _ in range(batch):
                call()
            lib.cg_toggle()
            lib.cg_dump(f"{variant}:{r}".encode())
        if otel is not None:
            otel.clear()


def callgrind_dumps(script: str, child_args: list[str]) -> tuple[list[tuple[str, int]], str]:
    """Run ``script --child HELPER *child_args`` under callgrind with collection off.

    The child switches collection on and off and dumps the counts with the helper
    (``HELPER_C``, built here). Returns (each dump's trigger, its instruction total) and
    valgrind's stderr (to show when a count is missing).
    """
    with tempfile.TemporaryDirectory() as tmp:
        helper = Path(tmp) / "cgctl.so"
        source = Path(tmp) / "cgctl.c"
        source.write_text(HELPER_C)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(helper), str(source)], check=True)
        out = Path(tmp) / "cg.out"
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--collect-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                script,
                "--child",
                str(helper),
                *child_args,
            ],
            capture_output=True,
            text=True,
        )
        dumps: list[tuple[str, int]] = []
        for dump in Path(tmp).glob("cg.out*"):
            text = dump.read_text()
            trigger = re.search(r"^desc: Trigger: Client Request: (\S+)$", text, re.M)
            total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if trigger and total:
                dumps.append((trigger.group(1), int(total.group(1))))
    return dumps, run.stderr


def measure(
    variants: tuple[str, ...], case: str, batch: int, rounds: int, provider: bool
) -> dict[str, float]:
    dumps, stderr = callgrind_dumps(
        __file__,
        [",".join(variants), case, str(batch), str(rounds), "provider" if provider else "none"],
    )
    per_batch: dict[str, list[float]] = defaultdict(list)
    for trigger, total in dumps:
        variant = trigger.rpartition(":")[0]  # "<variant>:<round>"
        per_batch[variant].append(total / batch)
    if set(per_batch) != set(variants):
        raise RuntimeError(f"callgrind gave no counts for some variants:\n{stderr[-2000:]}")
    return {variant: sum(xs) / len(xs) for variant, xs in per_batch.items()}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        helper, variants, case, batch, rounds, provider = argv[1:7]
        child(helper, variants.split(","), case, int(batch), int(rounds), provider == "provider")
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="anthropic-json")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--no-provider", action="store_true", help="the variants without a TracerProvider")
    args = p.parse_args(argv)
    variants = WITHOUT_PROVIDER if args.no_provider else WITH_PROVIDER
    counts = measure(variants, args.case, args.batch, args.rounds, not args.no_provider)
    bare = counts["bare"]
    title = "no TracerProvider" if args.no_provider else "with a TracerProvider"
    print(f"{args.case}, {title}: instructions per request, {args.rounds} x {args.batch} each")
    for variant in variants:
        added = f"{counts[variant] - bare:>+12,.0f}" if variant != "bare" else ""
        print(f"{variant:12} {counts[variant]:>12,.0f} {added}")


if __name__ == "__main__":
    main(sys.argv[1:])
