"""All 1,557 recorded exchanges replayed through the real transports, under httpx and httpx2.

For each exchange the inner MockTransport serves the recorded body; the caller must
receive exactly the bytes the inner transport produced, and the record the sinks get
must carry the SPEC section 4 partition computed by the independent oracle.

Replay modes, per family:

- ``plain``: the decoded body; SSE bodies up to 16 KB in 1-byte chunks, larger ones
  and JSON bodies in seeded random chunk sizes (1 byte to 4 KB);
- ``gzip``: the body gzip-compressed with ``content-encoding: gzip``, chunked the same way.

(The pure-parser test ``test_corpus_parser`` additionally feeds *every* body in 1-byte
chunks; here the whole httpx stack runs per chunk, so the biggest streams use random
chunks to keep the suite fast.)
"""

from __future__ import annotations

import gzip
import importlib
import random
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import cachewatch
from cachewatch.accounting._records import RequestInfo, UsageRecord
from corpus import EXPECTED_COUNT, api_label, load_corpus
from corpus_oracle import expected_partition

ONE_BYTE_LIMIT = 16 * 1024


class Capture:
    name = "capture"

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def start(self, info: RequestInfo) -> None:
        return None

    def finish(self, state: object | None, record: UsageRecord) -> None:
        self.records.append(record)


def _chunks(body: bytes, is_sse: bool, rng: random.Random) -> list[bytes]:
    if is_sse and len(body) <= ONE_BYTE_LIMIT:
        return [body[i : i + 1] for i in range(len(body))]
    out, i = [], 0
    while i < len(body):
        n = rng.choice((1, 2, 5, 17, 64, 333, 1024, 4096))
        out.append(body[i : i + n])
        i += n
    return out


@pytest.mark.parametrize("encoding", ["plain", "gzip"])
@pytest.mark.parametrize("family", ["httpx", "httpx2"])
def test_corpus_through_transport(family: str, encoding: str, capsys: pytest.CaptureFixture[str]) -> None:
    mod: Any = importlib.import_module(family)
    corpus = load_corpus()
    assert len(corpus) == EXPECTED_COUNT
    rng = random.Random(f"{family}-{encoding}")
    capture = Capture()
    current: dict[str, Any] = {}

    def handler(request: Any) -> Any:
        def gen() -> Iterator[bytes]:
            yield from current["chunks"]

        return mod.Response(current["status"], headers=current["headers"], content=gen())

    transport = cachewatch.CacheWatchTransport(
        mod.MockTransport(handler),
        breakpoints="off",
        registry=CollectorRegistry(),
        logger=_NullLogger(),
        sinks=[capture],
    )
    client = mod.Client(transport=transport)
    agree = 0
    failures: list[str] = []
    for exchange in corpus:
        api = api_label(exchange["path"])
        response = exchange["response"]
        ctype = response["headers"].get("content-type")
        text = response["body"]
        is_sse = "text/event-stream" in (ctype or "")
        body = text.encode()
        headers = {"content-type": ctype} if ctype else {}
        if encoding == "gzip":
            body = gzip.compress(body)
            headers["content-encoding"] = "gzip"
        chunks = _chunks(body, is_sse, rng)
        current.update(status=response["status"], headers=headers, chunks=chunks)
        with client.stream(
            "POST", f"https://{exchange['host']}{exchange['path']}", json=exchange["request"]["body"]
        ) as r:
            received = list(r.iter_raw())
        expected = expected_partition(api, text, is_sse)
        record = capture.records[-1]
        got = record.usage.as_partition() if record.usage is not None else None
        same_bytes = b"".join(received) == body and received == chunks
        if got == expected and same_bytes and len(capture.records) == agree + len(failures) + 1:
            agree += 1
        else:
            failures.append(
                f"{exchange['source']}: expected {expected}, got {got}, bytes identical={same_bytes}"
            )
    with capsys.disabled():
        print(f"\n[corpus through {family} transport, {encoding}] {agree}/{len(corpus)} exchanges agree")
    assert not failures, "\n".join(failures[:20])


class _NullLogger:
    def info(self, *args: Any, **kwargs: Any) -> None:
        pass
