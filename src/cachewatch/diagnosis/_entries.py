"""What a diagnosed request leaves in the fingerprint store for the requests after it.

Data flow: diagnoser (``_diagnoser``, after the verdict) -> **entries** -> the store
(``_store``, or ``_store_redis`` across a fleet) -> later requests' lookups.

The entries it read are refreshed; each of its breakpoints gets an entry (its write
tokens shared among the breakpoints past the read, a fan-out's second write of the
same prefix added to the first); its deepest entry is kept again under the
request's model-free anchors, with the first :data:`ANCHOR_HASH` bytes of each
position's digest, so a later request can find the first position that changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..accounting._records import TokenUsage
from ._fingerprints import Fingerprints
from ._store import TTL_SECONDS, Entry, FingerprintStore, new_entry, replace_entry

if TYPE_CHECKING:
    from ._diagnoser import RequestState

__all__ = ["ANCHOR_HASH", "store_entries"]

#: Bytes of each position's digest an anchor entry keeps.
ANCHOR_HASH = 4


def store_entries(
    store: FingerprintStore,
    max_anchor_positions: int,
    state: RequestState,
    fp: Fingerprints,
    usage: TokenUsage,
    n: int,
    keys: list[bytes],
    found: list[Entry | None],
    cands: list[tuple[int, str, Entry | None]],
    read_pos: int,
    tokens: list[float],
    anchor_keys: list[bytes],
) -> None:
    sent = state.sent_at
    readable = state.response_at if state.response_at is not None else sent
    provider, model_label, workspace = state.labels
    items: dict[bytes, Entry] = {}
    # Entries this request read: refreshed (the TTL restarts at this request's start).
    for i, st, e in cands:
        if e is not None and st == "live" and i <= read_pos:
            items[keys[i]] = replace_entry(e, refreshed_at=max(e.refreshed_at, sent), read=True)
    # This request's own breakpoints; its write tokens are attributed to the ones past the read.
    markers = [(m, ttl) for m, ttl in fp.markers if m < n]
    read_tokens = float(usage.cache_read)
    fresh = [(m, ttl) for m, ttl in markers if m > read_pos and tokens[m] > read_tokens]
    shares: dict[int, int] = {}
    write = usage.cache_write
    if fresh and write > 0:
        incs: list[float] = []
        prev = read_tokens
        for m, _ in fresh:
            incs.append(max(tokens[m] - prev, 1.0))
            prev = max(prev, tokens[m])
        scale = write / sum(incs)
        given = 0
        for k, (m, _) in enumerate(fresh):
            share = write - given if k == len(fresh) - 1 else int(incs[k] * scale)
            shares[m] = share
            given += share
    deepest: Entry | None = None
    for m, ttl_name in markers:
        ttl = min(TTL_SECONDS[ttl_name], state.max_ttl)
        key = keys[m]
        existing = items.get(key) or found[m]
        live = existing is not None and existing.cached and existing.expires_at > sent
        if m in shares or (write == 0 and m > read_pos and tokens[m] > read_tokens):
            share = shares.get(m, 0)
            cached = share > 0
            entry = new_entry(
                written_at=sent, refreshed_at=sent, ttl=ttl, model=fp.model, tokens=int(tokens[m]),
                position=m, readable_at=readable, cached=cached, written_tokens=share,
                provider=provider, model_label=model_label, workspace=workspace,
            )  # fmt: skip
            if existing is not None and live and cached and existing.pending_waste:
                # A fan-out wrote the same prefix again: both writes are waste unless read.
                entry = replace_entry(
                    entry,
                    written_at=min(existing.written_at, sent),
                    readable_at=min(existing.readable_at, readable),
                    written_tokens=existing.written_tokens + share,
                )
            elif existing is not None and live and not cached:
                entry = existing
        elif existing is not None and live:
            entry = replace_entry(
                existing, refreshed_at=max(existing.refreshed_at, sent), ttl=max(existing.ttl, ttl)
            )
        else:
            entry = new_entry(
                written_at=sent, refreshed_at=sent, ttl=ttl, model=fp.model, tokens=int(tokens[m]),
                position=m, readable_at=readable, cached=True, written_tokens=0,
                provider=provider, model_label=model_label, workspace=workspace,
            )  # fmt: skip
        items[key] = entry
        deepest = entry
    if deepest is not None and anchor_keys:
        limit = min(deepest.position + 1, max_anchor_positions)
        hashes = b"".join(fp.hashes[i][:ANCHOR_HASH] for i in range(limit))
        anchor = replace_entry(
            deepest,
            hashes=hashes,
            tools=fp.tools[:ANCHOR_HASH] if fp.tools is not None else b"",
            written_tokens=0,
            read=False,
            wasted=False,
        )
        for key in anchor_keys:
            items[key] = anchor
    if items:
        store.put_many(list(items.items()))
