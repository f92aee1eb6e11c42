"""The regret bound of ``breakpoints="auto"``, measured on many generated traffics.

One command from the repository root::

    .venv/bin/python benchmarks/regret.py [--cases 120] [--seed 1]

Each case is a random sequence of 1-4 traffic regimes (chats, one-shot prompts over a
shared or per-user system prompt, a system prompt that changes every request, retrieval
over varying chunks, a repeated document), built by the generator of
``tests/test_regret.py`` and replayed through the emulator's cache model in process
(``tests/_cache_sim.py``) under every fixed strategy and ``auto``. For each case it prints
nothing; at the end, the distribution of ``auto``'s excess over the best fixed strategy,
in units of one wasted write of the case's largest prompt per regime (the bound allows
K = 15), and how often ``auto`` beat the best fixed strategy.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _cache_sim import FIXED
from test_regret import SHAPES, K, _build, _replay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    excess: list[float] = []
    ratios: list[float] = []
    beat = 0
    worst: list[tuple[float, float, str]] = []
    started = time.perf_counter()
    for case in range(args.cases):
        regimes = [
            (rng.choice(SHAPES), rng.randint(1_200, 3_500), rng.randint(5, 30))
            for _ in range(rng.randint(1, 4))
        ]
        traffic, largest = _build(rng.getrandbits(32), regimes)
        costs = _replay(traffic)
        best = min(costs[s] for s in FIXED)
        excess.append((costs["auto"] - best) / (0.25 * largest * len(regimes)))
        ratios.append(costs["auto"] / best)
        beat += costs["auto"] < best
        shape = " + ".join(f"{n} {name} ({size:,} words)" for name, size, n in regimes)
        worst.append((costs["auto"] / best, excess[-1], shape))
        if (case + 1) % 20 == 0:
            print(f"  {case + 1}/{args.cases} cases ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    excess.sort()
    q = statistics.quantiles(excess, n=20)
    print(f"{args.cases} generated traffics, 1-4 regimes each ({', '.join(SHAPES)})")
    print("auto's excess over the best fixed strategy, in wasted writes of the largest prompt per regime:")
    print(
        f"  median {statistics.median(excess):.2f}, p95 {q[18]:.2f}, worst {excess[-1]:.2f} (bound K = {K})"
    )
    print(f"auto / best fixed: median {statistics.median(ratios):.3f}x, worst {max(ratios):.3f}x")
    print(f"auto cheaper than every fixed strategy in {beat}/{args.cases} cases")
    print("highest auto / best fixed ratios (small traffics, where one probe write weighs most):")
    for ratio, units, shape in sorted(worst, reverse=True)[:3]:
        print(f"  {ratio:.3f}x, excess {units:.2f} writes: {shape}")
    return 0 if excess[-1] <= K else 1


if __name__ == "__main__":
    sys.exit(main())
