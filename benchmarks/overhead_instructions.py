"""Deterministic overhead breakdown: CPU instructions per request under valgrind/callgrind.

    .venv/bin/python benchmarks/overhead_instructions.py        # needs Debian's valgrind

Wall-clock timings on a shared 2-core VM swing by ±30 %; instruction counts do not.
Each mode runs ``N`` observe-only JSON requests through an httpx client (after a
warm-up) in a child process under callgrind, once with N=0 and once with N=300; the
difference divided by 300 is the instructions one request costs. Modes remove one part
of cachewatch at a time, so the differences attribute the overhead:

- ``bare``: the client on the bare MockTransport;
- ``full``: ``CacheWatchTransport(breakpoints="off")`` with all sinks;
- ``-prometheus`` / ``-log`` / ``-otel``: without that sink;
- ``-sinks-observer``: no sinks and no response observer;
- ``-sinks-observer-finish``: additionally no record building (the shell floor).

Then the same for streams: ``SSE_N`` Anthropic streams of 200 chunks read with
``iter_raw`` (``sse-bare`` / ``sse-full``), reported per chunk (the per-request cost,
spread over 200 chunks, is included).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

MODES = ("bare", "full", "-prometheus", "-log", "-otel", "-sinks-observer", "-sinks-observer-finish")
N = 300
SSE_MODES = ("sse-bare", "sse-full")
SSE_N = 20


def child(mode: str, n: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import httpx
    import orjson
    import overhead

    import cachewatch.engine._exchange as exchange_module

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "application/json"}, content=iter((overhead.RESPONSE,))
        )

    if mode.startswith("sse-"):
        chunks = overhead.sse_chunks()
        bare, wrapped = overhead._clients(
            "httpx",
            True,
            lambda request: httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=iter(chunks)
            ),
        )
        client = bare if mode == "sse-bare" else wrapped
        body = orjson.dumps({**overhead.REQUEST, "stream": True})
        for _ in range(5 + n):
            with client.stream("POST", "/v1/messages", content=body) as r:
                for _c in r.iter_raw():
                    pass
        return
    bare, wrapped = overhead._clients("httpx", True, handler)
    engine = wrapped._transport.engine
    if mode.startswith("-") and "sinks" not in mode:
        engine.sinks = [s for s in engine.sinks if s.name != mode[1:]]
    if "sinks" in mode:
        engine.sinks = []
    if "observer" in mode:
        exchange_module.Exchange.response = lambda self, status, headers: setattr(self, "status_code", status)  # type: ignore[method-assign]
    if "finish" in mode:
        exchange_module.Exchange._finish = lambda self, outcome, error: None  # type: ignore[method-assign]
    client = bare if mode == "bare" else wrapped
    body = orjson.dumps(overhead.REQUEST)
    headers = {"content-type": "application/json"}
    for _ in range(50 + n):
        client.post("/v1/messages", content=body, headers=headers).read()


def instructions(mode: str, n: int) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            mode,
            str(n),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError("callgrind printed no instruction count")
    return int(match.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return
    per_request = {}
    for mode in MODES:
        per_request[mode] = (instructions(mode, N) - instructions(mode, 0)) // N
        print(f"{mode:24} {per_request[mode]:>10,} instructions/request", flush=True)
    full, bare = per_request["full"], per_request["bare"]
    print(f"\nadded by cachewatch: {full - bare:,} instructions/request ({full / bare:.2f}x the bare client)")
    for mode in ("-prometheus", "-log", "-otel"):
        print(f"  {mode[1:]} sink: {full - per_request[mode]:,}")
    floor = per_request["-sinks-observer-finish"]
    print(f"  shell + request classification: {floor - bare:,}")
    print(f"  record building (finish): {per_request['-sinks-observer'] - floor:,}")
    sinks = sum(full - per_request[m] for m in ("-prometheus", "-log", "-otel"))
    print(
        f"  response observer (decode, parse, partition): {full - sinks - per_request['-sinks-observer']:,}"
    )
    per_chunk = {}
    for mode in SSE_MODES:
        per_chunk[mode] = (instructions(mode, SSE_N) - instructions(mode, 0)) // (SSE_N * 200)
    print(
        f"\nSSE (200 chunks): bare {per_chunk['sse-bare']:,}, cachewatch {per_chunk['sse-full']:,} "
        f"instructions/chunk: added {per_chunk['sse-full'] - per_chunk['sse-bare']:,}"
    )


if __name__ == "__main__":
    main()
