"""Prefix fingerprints of one request, read off its prompt layout. Sans-IO.

Place in the flow: request -> planner (its :class:`~cachewatch.planning._layout.Layout`)
-> ... -> **fingerprints** -> diagnoser.

The positions and their cumulative digests come from the planner's layout walker
(``planning/_walk.py``), so the diagnosis and the planner agree on every position by
construction: one per tool definition, system block and message content block, in
tools -> system -> messages order, digests model-free and blind to ``cache_control``
(a plain string is a one-text-block list). With ``breakpoints="auto"`` the planner's
layout of the request is reused as is (nothing is parsed or hashed again); otherwise
the body is walked here, once, at the end of the response.

The store key of a prefix binds its digest to the model (caches are per model).
Three model-free anchors let a later request find its predecessor when its prefix
changed: the system region, the first input message, and both together (the
conversation). Only digests, indices, estimates and a closed set of block kinds are
kept: never content.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import xxhash

from ..accounting._records import slot_factory
from ..planning._layout import BLOCK_KINDS, CONT, CUM, IDX, KEY, LOC, MARK, OK, Layout, block_kind
from ..planning._tokens import TokenEstimator
from ..planning._walk import walk

__all__ = ["Fingerprints", "conversation_key", "fingerprint", "fingerprints_of"]

_h: Final[Callable[[bytes], bytes]] = xxhash.xxh3_128_digest
_NEVER_AUTOMATIC: Final = frozenset({"thinking", "redacted_thinking"})
_DEFAULT_ESTIMATOR = TokenEstimator(use_qwen_tokenizer=False)


@functools.lru_cache(maxsize=256)  # a few models carry the traffic; asked twice a diagnosis
def _model_tag(model: str) -> int:
    return int.from_bytes(_h(b"p\x00" + model.encode("utf-8", "surrogatepass")), "big")


#: model -> {position digest -> store key} (:meth:`Fingerprints.keys`), bounded: at most
#: ``_KEY_MODELS`` models of ``_KEYS_PER_MODEL`` keys (a few MB), each table emptied when full.
_KEYS: dict[str, dict[bytes, bytes]] = {}
_KEY_MODELS: Final = 16
_KEYS_PER_MODEL: Final = 4_096


@dataclass(frozen=True, slots=True)
class Fingerprints:
    """The cacheable-prefix fingerprints of one request (digests, indices and kinds only)."""

    model: str
    #: Cumulative model-free content digest per position (16 bytes).
    hashes: tuple[bytes, ...]
    #: Cumulative raw token estimate per position (uncalibrated).
    tokens: tuple[float, ...]
    #: ``tools`` / ``system`` / ``messages`` per position.
    locations: tuple[str, ...]
    #: ``(tool,)``, ``(system_block,)`` or ``(message, block)`` per position.
    indices: tuple[tuple[int, ...], ...]
    #: Block kind per position (a closed set, ``other`` for anything else).
    kinds: tuple[str, ...]
    #: ``(position, ttl)`` of every breakpoint, in prompt order.
    markers: tuple[tuple[int, str], ...]
    #: Model-free anchors: system + first input message, first input message, system.
    conversation: bytes | None = None
    first_message: bytes | None = None
    system: bytes | None = None
    #: Digest of the tool definitions alone (None without tools).
    tools: bytes | None = None

    def key(self, index: int) -> bytes:
        """The store key of the prefix ending at position ``index``."""
        return (int.from_bytes(self.hashes[index], "big") ^ _model_tag(self.model)).to_bytes(16, "big")

    def keys(self, n: int) -> list[bytes]:
        """The store keys of positions ``0..n-1`` (as :meth:`key`; each remembered per model).

        A conversation's prefixes come back on every turn: a dictionary lookup is about a
        tenth of the big-integer round trip that binds a digest to the model.
        """
        model = self.model
        cache = _KEYS.get(model)
        if cache is None:
            if len(_KEYS) >= _KEY_MODELS:
                _KEYS.clear()
            cache = _KEYS[model] = {}
        tag = -1
        out: list[bytes] = []
        for h in self.hashes[:n]:
            key = cache.get(h)
            if key is None:
                if tag < 0:
                    tag = _model_tag(model)
                key = (int.from_bytes(h, "big") ^ tag).to_bytes(16, "big")
                if len(cache) >= _KEYS_PER_MODEL:
                    cache.clear()
                cache[h] = key
            out.append(key)
        return out

    def path(self, index: int) -> str:
        """Dotted path of a position (``tools.2``, ``system.0``, ``messages.3.1``)."""
        return ".".join((self.locations[index], *(str(i) for i in self.indices[index])))


#: ``Fingerprints(...)``, every field given in field order (one per diagnosed request; see
#: ``accounting._records.slot_factory``).
new_fingerprints: Final[Callable[..., Fingerprints]] = slot_factory(Fingerprints)


def fingerprints_of(
    layout: Layout,
    model: str,
    extra_markers: Sequence[tuple[int, str]] = (),
    top_level: str | None = None,
) -> Fingerprints:
    """The fingerprints of a request from its layout.

    The breakpoints are the caller's (in the layout, nested ones on their parent block)
    plus ``extra_markers`` (``(position, ttl)``: the planner's insertions) plus a
    top-level automatic marker of TTL ``top_level`` on the last cacheable position.
    """
    positions = layout.positions
    markers: dict[int, str] = {}
    # Layout.kind, for every position in one loop (the commonest blocks inline).
    kinds: list[str] = []
    for i, pos in enumerate(positions):
        if pos[MARK] is not None:
            markers[i] = pos[MARK]
        block = pos[CONT][pos[KEY]]
        if type(block) is list and len(block) == 1:
            block = block[0]
        if type(block) is str:
            kinds.append("text")
        elif type(block) is dict and type(kind := block.get("type")) is str and kind in BLOCK_KINDS:
            kinds.append(kind)
        else:
            kinds.append(block_kind(block))
    for at, ttl in layout.nested:
        markers.setdefault(int(at + 0.5), ttl)
    for at, ttl in extra_markers:
        markers.setdefault(at, ttl)
    if top_level is not None:
        i = len(positions) - 1
        while i >= 0:  # the last cacheable position (no range object for what is one step)
            pos = positions[i]
            if (pos[OK] or pos[MARK] is not None) and kinds[i] not in _NEVER_AUTOMATIC:
                markers.setdefault(i, top_level)
                break
            i -= 1
    system = layout.system_anchor
    first = layout.first_input_anchor
    conversation = _h(b"conv\x00" + (system or b"") + first) if first is not None else None
    # The position tuples' columns, transposed at once: (locations, indices, ..., tokens).
    # (Every position is a 7-tuple, so the columns are whole without ``strict``.)
    columns = tuple(zip(*positions)) if positions else ((),) * 7  # noqa: B905
    return new_fingerprints(
        model,
        tuple(layout.digests),  # hashes
        columns[CUM],  # tokens
        columns[LOC],  # locations
        columns[IDX],  # indices
        tuple(kinds),
        tuple(sorted(markers.items())),  # markers
        conversation,
        first,  # first_message
        system,
        layout.tools_digest,  # tools
    )


def fingerprint(
    api: str, obj: Mapping[str, Any], model: str | None = None, estimator: TokenEstimator | None = None
) -> Fingerprints | None:
    """The fingerprints of a parsed request body, or None when the API/shape is not covered."""
    model_obj = obj.get("model")
    model = model if model is not None else (model_obj if isinstance(model_obj, str) else "")
    counter = (estimator or _DEFAULT_ESTIMATOR).prefix(model=model or None, provider="other")
    layout = walk(api, obj, counter, markers_on_tools=True)
    if layout is None:
        return None
    top = obj.get("cache_control") if api == "messages" else None
    top_ttl = ("1h" if top.get("ttl") == "1h" else "5m") if type(top) is dict else None
    return fingerprints_of(layout, model or "", top_level=top_ttl)


def conversation_key(api: str, obj: Mapping[str, Any]) -> bytes | None:
    """The model-free key of a conversation: its system prompt plus its first input message."""
    fp = fingerprint(api, obj, "", _DEFAULT_ESTIMATOR)
    return fp.conversation if fp is not None else None
