"""How close any online policy can come to the best fixed strategy chosen in hindsight.

    .venv/bin/python benchmarks/hindsight_floor.py [--traces 4000] [--seed 1]

The bar of SPEC section 11 compares ``auto`` with the best fixed strategy chosen *after*
the trace is known. On short traces near the break-even (here a first turn's write pays
when its prefix is read again within the TTL with probability 0.25 / 0.9 = 0.28: the
follow-up is the last turn, so nothing would write it again) that choice profits from
luck no policy deciding before each request can share. This script measures that floor
on the simplest such traffic, the two-turn sessions of ``savings_unseen.py``: a 1,200-token
system prompt (cached under both strategies), a 1,500-3,000-token document per session,
and a follow-up of 20-100 tokens within the TTL with probability ``p`` (or never).

Two fixed strategies differ only in whether each session's first turn writes its tail
(``sys+last``) or not (``system``). A policy that *knows* ``p`` exactly, and so does at
least as well in expectation as any learner, picks the strategy with the lower expected
cost. On each simulated trace its cost is compared with the realised cheaper of the two.
For each ``p`` and number of sessions it prints the mean of that ratio and the share of
traces on which even this policy breaks the 1.01 bar. Pure arithmetic, no emulator; a
few seconds. Exit code 0: a benchmark.
"""

from __future__ import annotations

import argparse
import random
import statistics

SYSTEM = 1_200
WRITE, READ = 1.25, 0.1


def _trace(rng: random.Random, sessions: int, p: float) -> tuple[float, float]:
    """Costs (system, sys+last) of one trace, in input-token units."""
    common = (WRITE - READ) * SYSTEM  # the system prompt's one write, under both
    no_tail = with_tail = common
    for _ in range(sessions):
        doc = rng.uniform(1_500, 3_000)
        no_tail += READ * SYSTEM + doc
        with_tail += READ * SYSTEM + WRITE * doc
        if rng.random() < p:
            follow = rng.uniform(20, 100)
            no_tail += READ * SYSTEM + doc + follow
            with_tail += READ * SYSTEM + READ * doc + WRITE * follow
    return no_tail, with_tail


def floor(rng: random.Random, sessions: int, p: float, traces: int) -> tuple[float, float, str]:
    """(mean ratio, share of traces above 1.01, the strategy a policy knowing p picks)."""
    runs = [_trace(rng, sessions, p) for _ in range(traces)]
    expected_no = statistics.fmean(r[0] for r in runs)
    expected_with = statistics.fmean(r[1] for r in runs)
    pick = 0 if expected_no <= expected_with else 1
    ratios = [r[pick] / min(r) for r in runs]
    return statistics.fmean(ratios), sum(x > 1.01 for x in ratios) / traces, ("system", "sys+last")[pick]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    sizes = (20, 40, 100, 400)
    print("A policy that knows p, against the best of the two fixed strategies in hindsight")
    print("(mean ratio over traces / share of traces above the 1.01 bar)\n")
    print(f"{'p':>6}  " + "".join(f"{f'{n} sessions':>22}" for n in sizes))
    for p in (0.10, 0.15, 0.20, 0.25, 0.28, 0.32, 0.40, 0.50):
        cells = []
        for n in sizes:
            mean, above, _ = floor(rng, n, p, args.traces)
            cells.append(f"{mean:>10.4f}x / {above:>6.1%}")
        print(f"{p:>6.2f}  " + "".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
