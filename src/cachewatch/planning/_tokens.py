"""Local, lazy, calibrated token estimation for the breakpoint planner.

Data flow: request -> planner (asks "does the prefix up to block i reach N tokens?")
-> transport -> usage record -> ``Planner.observe`` -> :meth:`TokenEstimator.observe`.

The planner must never tokenize a whole request on the hot path, so estimation is
two-tiered:

* **cheap** (always): each block costs its characters over a per-family
  characters-per-token figure (``_costs``);
* **precise** (only near a threshold): when a real tokenizer is available (the Qwen
  BPE table, ``_qwen``; optional, never downloaded) and the cheap estimate falls inside
  an uncertainty band around the threshold, the prefix's text is tokenized once.
  Outside the band, or with no tokenizer, the cheap estimate settles the question.

Calibration: :meth:`TokenEstimator.observe` takes the estimate and the prompt total
the provider billed and moves a per-(provider, model family) ratio by an EWMA,
clamped to ``[min_ratio, max_ratio]``. The ratio multiplies every later estimate.

The precise count is calibrated too, because the provider's bill is the truth and a
local tokenizer is only a model of it (a relay or an emulator may count otherwise, and
a provider's chat template adds tokens): a request whose threshold questions needed the
tokenizer is, for its first :data:`PRECISE_SAMPLES` times per (provider, family) and then
one time in :data:`PRECISE_EVERY`, counted whole by the tokenizer, and
:meth:`TokenEstimator.observe_precise` moves a second ratio (billed / tokenizer) that
multiplies later precise counts. Prompts over :data:`PRECISE_MAX_RAW` estimated tokens
are never counted whole. Until the first such bill the tokenizer only confirms: a prefix
the calibrated estimate or the tokenizer puts over the threshold is over it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from ._costs import (
    DEFAULT_FAMILY_COSTS,
    FamilyCosts,
    block_cost,
    content_cost,
    json_cost,
    message_cost,
    model_family,
    responses_item_cost,
    text_cost,
)
from ._qwen import load_qwen_tokenizer

__all__ = [
    "DEFAULT_ERROR",
    "MIN_ERROR",
    "PRECISE_EVERY",
    "PRECISE_MAX_RAW",
    "PRECISE_SAMPLES",
    "PrefixCounter",
    "TokenEstimator",
]

#: Requests per (provider, family) whose whole prompt is counted by the tokenizer first.
PRECISE_SAMPLES = 8
#: After those, one request in this many is (when its questions needed the tokenizer).
PRECISE_EVERY = 64
#: No whole-prompt count for a prompt estimated (raw) above this many tokens.
PRECISE_MAX_RAW = 16_000
#: :meth:`TokenEstimator.error` before two bills have measured it, and its floor.
DEFAULT_ERROR = 0.05
MIN_ERROR = 0.01


class TokenEstimator:
    """Cheap, lazy, self-calibrating token estimates.

    Args:
        family_costs: per-family constants (merged over :data:`DEFAULT_FAMILY_COSTS`).
        tokenizers: family -> ``text -> count`` functions used for precise counts near
            a threshold. By default the Qwen tokenizer is used for ``qwen`` when the
            optional ``tiktoken`` + ``dashscope`` packages are installed.
        use_qwen_tokenizer: look for the Qwen tokenizer (default True).
        band: relative half-width of the uncertainty band around a threshold inside
            which a precise count is made (when a tokenizer exists).
        alpha: EWMA weight of one observation in the calibration ratio.
        min_ratio, max_ratio: clamp of the calibration ratio.

    Example::

        est = TokenEstimator()
        counter = est.prefix(model="claude-sonnet-4-5", provider="anthropic")
        counter.add_block({"type": "text", "text": long_text})
        counter.reaches(1024)
    """

    def __init__(
        self,
        *,
        family_costs: Mapping[str, FamilyCosts] | None = None,
        tokenizers: Mapping[str, Callable[[str], int]] | None = None,
        use_qwen_tokenizer: bool = True,
        band: float = 0.2,
        alpha: float = 0.2,
        min_ratio: float = 0.5,
        max_ratio: float = 2.0,
        min_observed_tokens: int = 256,
    ) -> None:
        self._costs: dict[str, FamilyCosts] = dict(DEFAULT_FAMILY_COSTS)
        self._costs.update(family_costs or {})
        self._tokenizers: dict[str, Callable[[str], int]] = dict(tokenizers or {})
        self._use_qwen = use_qwen_tokenizer and "qwen" not in self._tokenizers
        self.band = band
        self.alpha = alpha
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.min_observed_tokens = min_observed_tokens
        self._ratios: dict[tuple[str, str], float] = {}
        self._tok_ratios: dict[tuple[str, str], float] = {}
        self._tok_seen: dict[tuple[str, str], int] = {}
        #: Per ratio table and key: an EWMA of the squared relative miss of its prediction.
        self._spreads: dict[tuple[bool, str, str], float] = {}
        self._lock = threading.Lock()

    # -- configuration lookups --------------------------------------------------------

    def costs(self, family: str) -> FamilyCosts:
        """The cheap-estimate constants of a family (``other`` when unknown)."""
        found = self._costs.get(family)
        return found if found is not None else self._costs["other"]

    def tokenizer(self, family: str) -> Callable[[str], int] | None:
        """The precise counter of a family, if one is available."""
        tok = self._tokenizers.get(family)
        if tok is None and family == "qwen" and self._use_qwen:
            tok = load_qwen_tokenizer()
            if tok is not None:
                self._tokenizers["qwen"] = tok
            else:
                self._use_qwen = False
        return tok

    def ratio(self, provider: str, family: str) -> float:
        """The calibration ratio (actual / estimated) learnt for this provider and family."""
        return self._ratios.get((provider, family), 1.0)

    def tokenizer_ratio(self, provider: str, family: str) -> float | None:
        """The ratio (billed / tokenizer count) learnt for this provider and family's
        tokenizer; ``None`` before the first bill of a request it counted whole."""
        return self._tok_ratios.get((provider, family))

    # -- calibration ------------------------------------------------------------------

    def wants_precise_sample(self, provider: str, family: str) -> bool:
        """Whether this request (whose questions needed the tokenizer) is counted whole.

        The first :data:`PRECISE_SAMPLES` per (provider, family), then one in
        :data:`PRECISE_EVERY`; deterministic for a given sequence of requests.
        """
        key = (provider, family)
        with self._lock:
            seen = self._tok_seen.get(key, 0)
            self._tok_seen[key] = seen + 1
        return seen < PRECISE_SAMPLES or (seen - PRECISE_SAMPLES) % PRECISE_EVERY == PRECISE_EVERY - 1

    def observe_precise(self, precise: float, actual: int, *, provider: str, family: str) -> None:
        """Feed back a billed prompt total for a request the tokenizer counted at ``precise``.

        Same filters and EWMA as :meth:`observe`, into the tokenizer's own ratio.
        """
        self._move(self._tok_ratios, precise, actual, (provider, family), precise=True)

    def observe(self, estimated: float, actual: int, *, provider: str, family: str) -> None:
        """Feed back a billed prompt total for a request estimated (uncalibrated) at ``estimated``.

        ``estimated`` must be the *raw* estimate (before the calibration ratio) so that
        the ratio converges to ``actual / raw``. Tiny prompts (fixed overheads dominate)
        and samples outside ``[min_ratio, max_ratio]`` (hidden content such as server-tool
        results, not a tokenizer difference) are ignored.
        """
        self._move(self._ratios, estimated, actual, (provider, family), precise=False)

    def error(self, provider: str, family: str, *, precise: bool) -> float:
        """How far a calibrated estimate may miss the bill, relatively: twice the RMS of
        the relative misses of the calibrated prediction seen so far (``precise``: the
        tokenizer's, else the cheap estimate's), within ``[MIN_ERROR, band]``;
        :data:`DEFAULT_ERROR` before the second bill."""
        var = self._spreads.get((precise, provider, family))
        if var is None:
            return DEFAULT_ERROR
        return min(self.band, max(MIN_ERROR, 2.0 * math.sqrt(var)))

    def _move(
        self,
        ratios: dict[tuple[str, str], float],
        counted: float,
        actual: int,
        key: tuple[str, str],
        *,
        precise: bool,
    ) -> None:
        if counted <= 0 or actual < self.min_observed_tokens:
            return
        sample = actual / counted
        if not self.min_ratio <= sample <= self.max_ratio:
            # Hidden content (server-tool results, image sizes, relay system prompts)
            # rather than a tokenizer difference: it would only drag the ratio around.
            return
        with self._lock:
            old = ratios.get(key)
            if old is not None:
                # How far the calibrated prediction (old) missed this bill.
                miss = (sample / old - 1.0) ** 2
                skey = (precise, *key)
                var = self._spreads.get(skey)
                self._spreads[skey] = miss if var is None else var + self.alpha * (miss - var)
            new = sample if old is None else old + self.alpha * (sample - old)
            ratios[key] = min(self.max_ratio, max(self.min_ratio, new))

    # -- estimates --------------------------------------------------------------------

    def prefix(self, *, model: str | None, provider: str) -> PrefixCounter:
        """A running counter over a prompt prefix, for threshold questions."""
        family = model_family(model)
        return PrefixCounter(self, family, provider)

    def text(self, text: str, *, family: str = "other") -> float:
        """Raw (uncalibrated) cheap estimate of a piece of text."""
        return text_cost(text, self.costs(family))

    def block(self, block: object, *, family: str = "other") -> float:
        """Raw (uncalibrated) cheap estimate of one content block or tool definition."""
        return block_cost(block, self.costs(family))

    def raw_request(self, api: str, body: Mapping[str, Any], *, family: str) -> float:
        """Uncalibrated whole-request estimate (benchmarks, diagnostics; walks every block)."""
        c = self.costs(family)
        total = c.per_request
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            total += c.tools_preamble
            for tool in tools:
                total += json_cost(tool, c)
        if api == "messages":
            system = body.get("system")
            if system:
                total += content_cost(system, c) + c.per_message
        elif api == "responses":
            instructions = body.get("instructions")
            if isinstance(instructions, str):
                total += text_cost(instructions, c) + c.per_message
            items = body.get("input")
            if isinstance(items, str):
                return total + text_cost(items, c) + c.per_message
            messages = items if isinstance(items, list) else []
            for item in messages:
                total += responses_item_cost(item, c)
            return total
        elif api == "dashscope_generation":
            inp = body.get("input")
            messages_obj = inp.get("messages") if isinstance(inp, dict) else None
            for message in messages_obj if isinstance(messages_obj, list) else ():
                total += message_cost(message, c)
            return total
        messages_list = body.get("messages")
        for message in messages_list if isinstance(messages_list, list) else ():
            total += message_cost(message, c)
        return total


class PrefixCounter:
    """A running token count over a prompt prefix, walked in tools -> system -> messages order.

    ``add_*`` calls are cheap (character counts) and return the running raw total, which
    the caller keeps per position. :meth:`reaches_at` answers "does the prefix through
    that position reach N tokens?" from the cheap estimate; only when the answer falls
    inside the uncertainty band and a real tokenizer exists for the model family is the
    prefix's text counted precisely (each text once per request).
    """

    __slots__ = (
        "_ascii_cpt",
        "_c",
        "_costs",
        "_cums",
        "_est",
        "_family",
        "_json_cpt",
        "_parts",
        "_per_block",
        "_precise",
        "_provider",
        "_ratio",
        "_tok",
        "_tok_ratio",
        "_track",
        "per_message",
        "raw",
    )

    def __init__(self, estimator: TokenEstimator, family: str, provider: str) -> None:
        self._est = estimator
        self._family = family
        self._c = estimator.costs(family)
        self._ascii_cpt = self._c.ascii_cpt
        self._per_block = self._c.per_block
        self._json_cpt = self._c.json_cpt
        #: Tokens added per message (what :meth:`add_message` adds; read by the planner's hot loop).
        self.per_message = self._c.per_message
        self._ratio = estimator.ratio(provider, family)
        #: Raw (uncalibrated) cheap estimate so far.
        self.raw = self._c.per_request
        # Only remember texts when a precise tokenizer could be asked about them.
        #: The family's precise counter (looked up once: reaches_at asks per candidate).
        self._tok = estimator.tokenizer(family)
        self._track = self._tok is not None
        self._provider = provider
        self._tok_ratio = estimator.tokenizer_ratio(provider, family) if self._track else None
        self._parts: list[str] = []
        self._costs: list[float] = []
        self._cums: list[float] = []
        self._precise: list[int] = []

    @property
    def family(self) -> str:
        return self._family

    @property
    def ratio(self) -> float:
        """The calibration ratio applied to raw estimates."""
        return self._ratio

    def error(self) -> float:
        """How far this request's threshold answers may miss the bill, relatively
        (:meth:`TokenEstimator.error` of the count that answers near a threshold: the
        tokenizer's once calibrated, else the cheap estimate's)."""
        precise = self._tok is not None and self._tok_ratio is not None
        return self._est.error(self._provider, self._family, precise=precise)

    @property
    def estimate(self) -> int:
        """Calibrated estimate of the prefix so far."""
        return math.ceil(self.raw * self._ratio)

    def add_tools(self, tools: Sequence[object]) -> None:
        """Tools are present: add the provider's tool-use preamble once."""
        if tools:
            self.raw += self._c.tools_preamble

    def add_definitions(
        self, tools: Sequence[object], jsons: list[bytes | None] | None = None
    ) -> list[float]:
        """Add each tool definition in turn (as :meth:`add_block`); returns the running raw totals.

        With ``jsons``, the JSON each plain definition was measured through is appended to
        it (None for the others), for the caller to reuse instead of serialising again.
        """
        out: list[float] = []
        dumps = orjson.dumps
        json_cpt = self._json_cpt
        raw = self.raw
        for tool in tools:
            serialised: bytes | None = None
            if (
                type(tool) is dict
                and "type" not in tool
                and "text" not in tool
                and "image" not in tool
                and "video" not in tool
            ):
                # A plain definition (name, description, schema): measured through its JSON,
                # exactly as block_cost would, without its chain of type tests.
                try:
                    serialised = dumps(tool)
                    raw += len(serialised) / json_cpt
                except TypeError:
                    raw += 0.0
                self.raw = raw
            else:
                raw = self.add_block(tool)
            out.append(raw)
            if jsons is not None:
                jsons.append(serialised)
        return out

    def add_block(self, block: object) -> float:
        """Add one block (tool definition, system block, content part); returns the running raw total."""
        text: object = None
        if type(block) is dict:
            text = block.get("text")
            kind = block.get("type")
            if type(text) is str and (kind == "text" or kind is None):
                # Fast path for the commonest block: a text part.
                cost = (
                    len(text) / self._ascii_cpt if text.isascii() else text_cost(text, self._c)
                ) + self._per_block
            elif kind == "tool_result" and type(content := block.get("content")) is str:
                # Fast paths for the agent-loop blocks; same arithmetic as block_cost.
                cost = (
                    len(content) / self._ascii_cpt if content.isascii() else text_cost(content, self._c)
                ) + 3 * self._per_block
            elif kind == "tool_use":
                inp = block.get("input")
                if type(inp) is dict:
                    try:
                        args = len(orjson.dumps(inp)) / self._json_cpt
                    except TypeError:
                        args = 0.0
                else:
                    args = json_cost(inp, self._c)
                name = block.get("name", "")
                if type(name) is str and name.isascii():
                    cost = args + len(name) / self._ascii_cpt + 3 * self._per_block
                else:
                    cost = args + text_cost(str(name), self._c) + 3 * self._per_block
            else:
                cost = block_cost(block, self._c)
        elif type(block) is str:
            text = block
            cost = len(block) / self._ascii_cpt if block.isascii() else text_cost(block, self._c)
        else:
            cost = block_cost(block, self._c)
        self.raw += cost
        if self._track and type(text) is str and cost > 0:
            self._parts.append(text)
            self._costs.append(cost)
            self._cums.append(self.raw)
        return self.raw

    def add_text(self, text: str) -> float:
        """Add the text of a text block; returns the running raw total."""
        cost = (len(text) / self._ascii_cpt if text.isascii() else text_cost(text, self._c)) + self._per_block
        self.raw += cost
        if self._track and cost > 0:
            self._parts.append(text)
            self._costs.append(cost)
            self._cums.append(self.raw)
        return self.raw

    def add_json(self, value: object) -> float:
        """Add a structured value (tool schema, tool call) measured through its JSON."""
        self.raw += json_cost(value, self._c)
        return self.raw

    def add_message(self) -> float:
        """A message boundary (role markers)."""
        self.raw += self._c.per_message
        return self.raw

    def reaches(self, threshold: float) -> bool:
        """Whether the whole prefix so far is estimated at ``threshold`` tokens or more."""
        return self.reaches_at(self.raw, threshold)

    def reaches_at(self, raw_through: float, threshold: float) -> bool:
        """Whether the prefix whose running raw total was ``raw_through`` reaches ``threshold``."""
        est = raw_through * self._ratio
        band = self._est.band
        if est >= threshold * (1.0 + band) or est < threshold * (1.0 - band):
            return est >= threshold
        tok = self._tok
        if tok is None:
            return est >= threshold
        precise = raw_through
        for i, cum in enumerate(self._cums):
            if cum > raw_through:
                break
            if i == len(self._precise):
                self._precise.append(tok(self._parts[i]))
            precise += self._precise[i] - self._costs[i]
        if self._tok_ratio is None:
            # No bill has calibrated the tokenizer yet: it may count otherwise than the
            # provider bills (a relay, an emulator, a chat template), so it does not yet
            # veto what the estimate reaches. Marking a prefix under the minimum costs no
            # write; leaving one over it unmarked costs the next request a read.
            return est >= threshold or precise >= threshold
        # The tokenizer's own ratio (billed / its count), not the cheap estimate's.
        return precise * self._tok_ratio >= threshold

    def precise_sample(self) -> float | None:
        """The tokenizer's count of the whole prompt, if this request is a calibration sample.

        Only a request whose threshold questions needed the tokenizer, under
        :data:`PRECISE_MAX_RAW`, and picked by :meth:`TokenEstimator.wants_precise_sample`.
        """
        tok = self._tok
        if tok is None or not self._precise or self.raw > PRECISE_MAX_RAW:
            return None
        if not self._est.wants_precise_sample(self._provider, self._family):
            return None
        precise = self.raw
        known = self._precise
        for i, part in enumerate(self._parts):
            if i == len(known):
                known.append(tok(part))
            precise += known[i] - self._costs[i]
        return precise
