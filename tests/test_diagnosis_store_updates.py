"""What a diagnosed request leaves in the store: the refreshed reads, its breakpoints, its anchors.

The store's updates are built positionally (``refreshed_entry``, ``anchor_entry``) and a
read entry that is also a breakpoint is refreshed once; these check that the result is
field for field what ``dataclasses.replace`` gives, one change after the other.
"""

from __future__ import annotations

import dataclasses

import orjson
import xxhash

from cachewatch.accounting._records import TokenUsage
from cachewatch.diagnosis import Diagnoser, MemoryStore
from cachewatch.diagnosis._fingerprints import Fingerprints, fingerprint
from cachewatch.diagnosis._store import Entry, anchor_entry, refreshed_entry

ENTRY = Entry(
    written_at=1.0,
    refreshed_at=2.0,
    ttl=300.0,
    model="m",
    tokens=1234,
    position=3,
    readable_at=1.5,
    cached=True,
    written_tokens=77,
    read=False,
    wasted=False,
    provider="anthropic",
    model_label="m-label",
    workspace="ws",
    hashes=b"\x01\x02\x03\x04",
    tools=b"\x05\x06\x07\x08",
)


def test_a_refresh_is_replace_of_its_three_fields() -> None:
    got = refreshed_entry(ENTRY, 9.0, 3_600.0, True)
    assert got == dataclasses.replace(ENTRY, refreshed_at=9.0, ttl=3_600.0, read=True)
    assert type(got) is Entry


def test_an_anchor_is_the_deepest_entry_with_the_digests_and_no_write() -> None:
    got = anchor_entry(ENTRY, b"abcd", b"efgh")
    want = dataclasses.replace(
        ENTRY, hashes=b"abcd", tools=b"efgh", written_tokens=0, read=False, wasted=False
    )
    assert got == want


def words(seed: str, n: int) -> str:
    return " ".join(f"{seed}{i}x" for i in range(n))


BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 10,
    "system": [{"type": "text", "text": words("sys", 1500), "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": words("u", 300), "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": words("v", 200), "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
        },
    ],
}


def test_a_full_read_refreshes_each_read_breakpoint_once_with_both_changes() -> None:
    store = MemoryStore()
    diag = Diagnoser(store)
    raw = orjson.dumps(BODY)
    fp = fingerprint("messages", BODY, "claude-sonnet-4-6")
    assert fp is not None
    assert len(fp.markers) == 3
    keys = fp.keys(len(fp.hashes))
    marked = [keys[m] for m, _ in fp.markers]

    first = diag.before("messages", raw, "claude-sonnet-4-6", 100.0, max_ttl=3_600.0)
    diag.started(first, 101.0)
    diag.after(first, TokenUsage(input=10, cache_write_5m=5_000), 102.0)
    written = [store.get(k) for k in marked]
    assert all(e is not None and not e.read for e in written)
    # A 5m write at the breakpoint marked 1h is kept at 1h; the first two at 5m.
    assert [e.ttl for e in written if e is not None] == [300.0, 300.0, 3_600.0]

    second = diag.before("messages", raw, "claude-sonnet-4-6", 200.0, max_ttl=3_600.0)
    diag.started(second, 201.0)
    assert diag.after(second, TokenUsage(input=10, cache_read=5_000), 202.0) is None
    for before, key in zip(written, marked, strict=True):
        assert before is not None
        after = store.get(key)
        # Read (refreshed, marked read) and a breakpoint again (refreshed, TTL kept at the longer).
        assert after == dataclasses.replace(before, refreshed_at=200.0, read=True)
    anchor = store.get(_anchor_key(fp))
    deepest = store.get(marked[-1])
    assert anchor is not None
    assert deepest is not None
    assert anchor == dataclasses.replace(
        deepest, hashes=anchor.hashes, tools=b"", written_tokens=0, read=False, wasted=False
    )
    assert len(anchor.hashes) == 4 * (deepest.position + 1)


def _anchor_key(fp: Fingerprints) -> bytes:
    assert fp.conversation is not None
    return xxhash.xxh3_128_digest(b"a:conv" + fp.conversation)


def test_remembered_keys_are_the_keys_of_each_position() -> None:
    import os

    from cachewatch.diagnosis._fingerprints import _KEYS_PER_MODEL, _model_tag, new_fingerprints

    for model in ("claude-a", "claude-b", ""):
        digests = tuple(os.urandom(16) for _ in range(_KEYS_PER_MODEL + 10))  # past one table's bound
        fp = new_fingerprints(model, digests, (), (), (), (), ())
        want = [(int.from_bytes(h, "big") ^ _model_tag(model)).to_bytes(16, "big") for h in digests]
        assert fp.keys(len(digests)) == want
        assert fp.keys(len(digests)) == want  # remembered (and past the bound, again)
        assert fp.keys(7) == want[:7]
        assert [fp.key(i) for i in range(20)] == want[:20]


def _calibrated_by_min_max(
    raw: tuple[float, ...], total_raw: float, usage: TokenUsage, last_marker: int
) -> list[float]:
    """The calibration as first written, with min()/max() and the usage properties."""
    prompt = usage.prompt_total
    if prompt <= 0 or total_raw <= 0:
        return list(raw)
    cached = usage.cache_read + usage.cache_write
    head = raw[last_marker] if 0 <= last_marker < len(raw) else 0.0
    if cached <= 0 or head <= 0 or head >= total_raw:
        ratio = min(5.0, max(0.2, prompt / total_raw))
        return [t * ratio for t in raw]
    r1 = min(5.0, max(0.2, cached / head))
    rest = max(0, prompt - cached)
    r2 = min(5.0, max(0.2, rest / (total_raw - head))) if rest > 0 else 0.0
    base = head * r1
    return [t * r1 if i <= last_marker else base + (t - head) * r2 for i, t in enumerate(raw)]


def test_calibration_is_the_min_max_form_exactly() -> None:
    import random

    from cachewatch.diagnosis._verdicts import calibrated

    rng = random.Random(5)
    for _ in range(20_000):
        k = rng.randint(0, 8)
        raw = tuple(sorted(rng.uniform(0, 5_000) for _ in range(k)))
        total = raw[-1] if raw and rng.random() < 0.7 else rng.choice([0.0, rng.uniform(0, 9_000)])
        usage = TokenUsage(
            input=rng.choice([0, 5, rng.randint(0, 9_000)]),
            cache_read=rng.choice([0, rng.randint(0, 9_000)]),
            cache_write_5m=rng.choice([0, rng.randint(0, 9_000)]),
            cache_write_1h=rng.choice([0, rng.randint(0, 900)]),
            output=1,
        )
        last = rng.randint(-1, k)
        assert calibrated(raw, total, usage, last) == _calibrated_by_min_max(raw, total, usage, last)
