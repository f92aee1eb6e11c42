"""Sampling profile of the observe-only hot path with py-spy, summarised per function.

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile_observe.py            # records, then summarises
    .venv/bin/python benchmarks/profile_observe.py --summarise spy.txt

Runs ``N`` observe-only JSON requests (``overhead.py``'s request, response and clients)
under ``py-spy record --format raw`` and prints, for the wrapped client's ``post``, the
inclusive share of samples of each cachewatch function and of the inner MockTransport,
converted to µs with the loop's own per-request time. Sampling attributes time to
Python frames; the instruction counts of ``overhead_instructions.py`` are the precise
complement.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def loop(n: int) -> float:
    """``n`` observe-only requests through the wrapped httpx client; per-request seconds."""
    sys.path.insert(0, str(HERE))
    import httpx
    import orjson
    import overhead

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "application/json"}, content=iter((overhead.RESPONSE,))
        )

    _, wrapped = overhead._clients("httpx", True, handler)
    body = orjson.dumps(overhead.REQUEST)
    headers = {"content-type": "application/json"}
    for _ in range(500):
        wrapped.post("/v1/messages", content=body, headers=headers).read()
    started = time.perf_counter()
    for _ in range(n):
        wrapped.post("/v1/messages", content=body, headers=headers).read()
    return (time.perf_counter() - started) / n


def summarise(raw: Path, per_request: float | None, top: int = 25) -> None:
    """Inclusive sample shares under ``Client.post`` from py-spy's raw (collapsed) output."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        names = []
        for frame in stack.split(";"):
            func, _, where = frame.partition(" (")
            names.append(f"{func} ({where.split(':')[0]})")
        if not any(name.startswith("Client.post ") for name in names):
            continue
        n = int(count)
        total += n
        for name in set(names):
            inclusive[name] += n
    if not total:
        print("no samples under Client.post")
        return
    unit = f"  (x {per_request * 1e6:.1f} µs per request)" if per_request else ""
    print(f"{total} samples under Client.post; inclusive share{unit}")
    for name, n in inclusive.most_common():
        if not (_ours(name) or name.startswith(("MockTransport.", "Client.post "))):
            continue
        share = n / total
        micro = f"{share * per_request * 1e6:8.1f} µs" if per_request else ""
        print(f"{share:7.1%} {micro}  {name}")
        top -= 1
        if top == 0:
            break


def _ours(name: str) -> bool:
    return "cachewatch/" in name.split(" (", 1)[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="requests to profile")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--summarise", type=Path, help="summarise this py-spy raw file instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{loop(args.n) * 1e6:.3f}")
        return 0
    if args.summarise is not None:
        summarise(args.summarise, None)
        return 0
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    # The time per request comes from a run without the profiler (py-spy pauses the
    # process at each sample); the shares come from the profiled run.
    plain = subprocess.run(
        [sys.executable, __file__, "--child", "-n", "20000"], check=True, capture_output=True, text=True
    )
    per_request = float(plain.stdout.strip().splitlines()[-1]) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "spy.txt"
        cmd = [spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--", sys.executable,
               __file__, "--child", "-n", str(args.n)]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        summarise(raw, per_request)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
