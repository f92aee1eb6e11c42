"""Local, lazy, calibrated token estimation for the breakpoint planner.

Data flow: request -> planner (asks "does the prefix up to block i reach N tokens?")
-> transport -> usage record -> ``Planner.observe`` -> :meth:`TokenEstimator.observe`.

The planner must never tokenize a whole request on the hot path, so estimation is
two-tiered:

* **cheap** (always): a block costs its character count divided by a per-family
  characters-per-token figure. ``str.isascii()`` and ``len(str.encode())`` are C
  loops, so a 1 MB body costs microseconds. Wide characters (CJK and the like) are
  weighted separately because they carry far more tokens per character.
  Structured values (tool schemas, ``tool_use`` input) are measured through their
  ``orjson`` serialisation. Images and binary documents get a flat cost.
* **precise** (only near a threshold): when a real tokenizer is available (the Qwen
  BPE table ``qwen.tiktoken`` shipped in the ``dashscope`` package, read through
  ``tiktoken``; both optional, never downloaded) and the cheap estimate falls inside
  an uncertainty band around the threshold, the prefix's text is tokenized once.
  Outside the band, or with no tokenizer, the cheap estimate settles the question.

Calibration: :meth:`TokenEstimator.observe` takes the estimate and the prompt total
the provider billed and moves a per-(provider, model family) ratio by an EWMA,
clamped to ``[min_ratio, max_ratio]``. The ratio multiplies every later estimate.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "FamilyCosts",
    "PrefixCounter",
    "TokenEstimator",
    "load_qwen_tokenizer",
    "model_family",
]

#: Prefix of a (lower-cased, vendor-prefix stripped) model id -> tokenizer family.
_FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("claude", "claude"),
    ("anthropic.claude", "claude"),
    ("qwen", "qwen"),
    ("qwq", "qwen"),
    ("qvq", "qwen"),
    ("gpt", "gpt"),
    ("chatgpt", "gpt"),
    ("o1", "gpt"),
    ("o3", "gpt"),
    ("o4", "gpt"),
    ("text-", "gpt"),
    ("deepseek", "deepseek"),
    ("kimi", "kimi"),
    ("moonshot", "kimi"),
    ("glm", "glm"),
    ("minimax", "minimax"),
    ("abab", "minimax"),
    ("llama", "llama"),
    ("meta-llama", "llama"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("codestral", "mistral"),
    ("gemini", "gemini"),
    ("gemma", "gemini"),
)


#: model id -> family, memoised (the planner asks once per request; ids repeat).
_family_cache: dict[str, str] = {}


def model_family(model: str | None) -> str:
    """The tokenizer family of a model id (``claude``, ``gpt``, ``qwen``...), ``other`` if unknown.

    Vendor prefixes such as ``anthropic/`` (OpenRouter) or ``us.anthropic.`` (Bedrock)
    are ignored.
    """
    if not model:
        return "other"
    found = _family_cache.get(model)
    if found is None:
        found = _model_family(model)
        if len(_family_cache) >= 4096:
            _family_cache.clear()
        _family_cache[model] = found
    return found


def _model_family(model: str) -> str:
    m = model.lower()
    slash = m.rfind("/")
    if slash != -1:
        m = m[slash + 1 :]
    for prefix, family in _FAMILY_PREFIXES:
        if m.startswith(prefix):
            return family
    # Bedrock-style "us.anthropic.claude-..." or "global.anthropic.claude-...".
    if ".claude" in m:
        return "claude"
    return "other"


@dataclass(frozen=True, slots=True)
class FamilyCosts:
    """The cheap estimator's constants for one tokenizer family (fitted on the corpus)."""

    #: Characters per token for ASCII text.
    ascii_cpt: float = 4.0
    #: Characters per token for wide (non-ASCII) characters.
    wide_cpt: float = 1.2
    #: Characters per token for serialised JSON (tool schemas, tool inputs).
    json_cpt: float = 3.2
    #: Tokens added per message (role and turn markers).
    per_message: float = 4.0
    #: Tokens added per content block.
    per_block: float = 1.0
    #: Tokens added once when tools are present (the provider's tool-use preamble).
    tools_preamble: float = 0.0
    #: Tokens added once per request.
    per_request: float = 3.0
    #: Flat cost of one image.
    image: float = 1_000.0
    #: Flat cost of one binary (PDF...) document.
    document: float = 1_500.0


#: Fitted on the recorded-exchange corpus (``tests/data/``) (see ``benchmarks/estimator_error.py``).
DEFAULT_FAMILY_COSTS: Mapping[str, FamilyCosts] = {
    "claude": FamilyCosts(
        ascii_cpt=4.6,
        wide_cpt=1.0,
        json_cpt=4.5,
        per_message=5.0,
        per_block=3.0,
        tools_preamble=550.0,
        per_request=3.0,
    ),
    "gpt": FamilyCosts(ascii_cpt=4.8, json_cpt=5.0, per_message=4.0, per_block=1.0, per_request=3.0),
    "qwen": FamilyCosts(ascii_cpt=4.0, wide_cpt=1.4, json_cpt=4.0, per_message=4.0, tools_preamble=150.0),
    "other": FamilyCosts(ascii_cpt=4.6, json_cpt=5.0, per_message=3.0, per_block=2.0, per_request=5.0),
}

_IMAGE_TYPES = frozenset({"image", "image_url", "input_image", "video", "video_url", "input_audio", "audio"})


def _text_cost(text: str, costs: FamilyCosts) -> float:
    n = len(text)
    if n == 0:
        return 0.0
    if text.isascii():
        return n / costs.ascii_cpt
    # UTF-8 bytes beyond one per character: ~2 per CJK character, 1 per accented letter.
    extra = len(text.encode("utf-8", "surrogatepass")) - n
    wide = min(n, extra / 2.0)
    return (n - wide) / costs.ascii_cpt + wide / costs.wide_cpt


def _json_cost(value: object, costs: FamilyCosts) -> float:
    if isinstance(value, str):
        return _text_cost(value, costs)
    try:
        raw = orjson.dumps(value)
    except TypeError:
        return 0.0
    return len(raw) / costs.json_cpt


def _block_cost(block: object, costs: FamilyCosts) -> float:
    """Cheap token estimate of one content block / content part / tool definition."""
    if isinstance(block, str):
        return _text_cost(block, costs)
    if not isinstance(block, dict):
        return _json_cost(block, costs)
    kind = block.get("type")
    text = block.get("text")
    if isinstance(text, str) and (kind is None or kind in ("text", "input_text", "output_text")):
        return _text_cost(text, costs) + costs.per_block
    if kind in _IMAGE_TYPES or (kind is None and ("image" in block or "video" in block)):
        return costs.image
    if kind == "tool_result":
        content = block.get("content")
        inner = 0.0
        if isinstance(content, str):
            inner = _text_cost(content, costs)
        elif isinstance(content, list):
            for part in content:
                inner += _block_cost(part, costs)
        return inner + 3 * costs.per_block
    if kind == "tool_use":
        return (
            _json_cost(block.get("input"), costs)
            + _text_cost(str(block.get("name", "")), costs)
            + 3 * costs.per_block
        )
    if kind in ("thinking", "redacted_thinking"):
        # Thinking from earlier turns is not billed as input (research A.9); count nothing,
        # which errs towards fewer markers, never a wasted one.
        return 0.0
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict):
            data = source.get("data")
            if source.get("type") == "text" and isinstance(data, str):
                return _text_cost(data, costs) + costs.per_block
            if source.get("type") == "content":
                inner_content = source.get("content")
                if isinstance(inner_content, list):
                    return sum(_block_cost(part, costs) for part in inner_content)
                if isinstance(inner_content, str):
                    return _text_cost(inner_content, costs)
        return costs.document
    return _json_cost(block, costs)


def _content_cost(content: object, costs: FamilyCosts) -> float:
    if isinstance(content, str):
        return _text_cost(content, costs)
    if isinstance(content, list):
        total = 0.0
        for block in content:
            total += _block_cost(block, costs)
        return total
    if content is None:
        return 0.0
    return _json_cost(content, costs)


# -- optional real tokenizer ----------------------------------------------------------

#: The pre-tokenisation pattern of the Qwen BPE (as published with the tokenizer).
_QWEN_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_qwen_lock = threading.Lock()
_qwen_cache: list[Callable[[str], int] | None] = []


def _find_qwen_table() -> Path | None:
    try:
        spec = importlib.util.find_spec("dashscope")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for rel in ("resources/qwen.tiktoken", "tokenizers/qwen.tiktoken"):
            candidate = Path(root) / rel
            if candidate.is_file():
                return candidate
    return None


def load_qwen_tokenizer() -> Callable[[str], int] | None:
    """A ``text -> token count`` function for Qwen models, or None.

    Needs ``tiktoken`` and the ``qwen.tiktoken`` table that ships inside the
    ``dashscope`` package (found without importing ``dashscope``). Nothing is
    downloaded. The result is cached for the life of the process.
    """
    with _qwen_lock:
        if _qwen_cache:
            return _qwen_cache[0]
        counter: Callable[[str], int] | None = None
        try:
            if importlib.util.find_spec("tiktoken") is not None:
                table = _find_qwen_table()
                if table is not None:
                    counter = _build_qwen(table)
        except Exception:  # an unusable optional extra must never break planning
            counter = None
        _qwen_cache.append(counter)
        return counter


def _build_qwen(table: Path) -> Callable[[str], int]:
    import base64

    import tiktoken

    ranks: dict[bytes, int] = {}
    for line in table.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    specials = {"<|endoftext|>": len(ranks), "<|im_start|>": len(ranks) + 1, "<|im_end|>": len(ranks) + 2}
    enc: Any = tiktoken.Encoding(
        "cachewatch-qwen", pat_str=_QWEN_PAT, mergeable_ranks=ranks, special_tokens=specials
    )

    def count(text: str) -> int:
        return len(enc.encode_ordinary(text))

    return count


# -- the estimator ----------------------------------------------------------------------


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

    # -- calibration ------------------------------------------------------------------

    def observe(self, estimated: float, actual: int, *, provider: str, family: str) -> None:
        """Feed back a billed prompt total for a request estimated (uncalibrated) at ``estimated``.

        ``estimated`` must be the *raw* estimate (before the calibration ratio) so that
        the ratio converges to ``actual / raw``. Tiny prompts (fixed overheads dominate)
        and samples outside ``[min_ratio, max_ratio]`` (hidden content such as server-tool
        results, not a tokenizer difference) are ignored.
        """
        if estimated <= 0 or actual < self.min_observed_tokens:
            return
        sample = actual / estimated
        if not self.min_ratio <= sample <= self.max_ratio:
            # Hidden content (server-tool results, image sizes, relay system prompts)
            # rather than a tokenizer difference: it would only drag the ratio around.
            return
        key = (provider, family)
        with self._lock:
            old = self._ratios.get(key)
            new = sample if old is None else old + self.alpha * (sample - old)
            self._ratios[key] = min(self.max_ratio, max(self.min_ratio, new))

    # -- estimates --------------------------------------------------------------------

    def prefix(self, *, model: str | None, provider: str) -> PrefixCounter:
        """A running counter over a prompt prefix, for threshold questions."""
        family = model_family(model)
        return PrefixCounter(self, family, provider)

    def text(self, text: str, *, family: str = "other") -> float:
        """Raw (uncalibrated) cheap estimate of a piece of text."""
        return _text_cost(text, self.costs(family))

    def block(self, block: object, *, family: str = "other") -> float:
        """Raw (uncalibrated) cheap estimate of one content block or tool definition."""
        return _block_cost(block, self.costs(family))

    def raw_request(self, api: str, body: Mapping[str, Any], *, family: str) -> float:
        """Uncalibrated whole-request estimate (benchmarks, diagnostics; walks every block)."""
        c = self.costs(family)
        total = c.per_request
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            total += c.tools_preamble
            for tool in tools:
                total += _json_cost(tool, c)
        if api == "messages":
            system = body.get("system")
            if system:
                total += _content_cost(system, c) + c.per_message
        elif api == "responses":
            instructions = body.get("instructions")
            if isinstance(instructions, str):
                total += _text_cost(instructions, c) + c.per_message
            items = body.get("input")
            if isinstance(items, str):
                return total + _text_cost(items, c) + c.per_message
            messages = items if isinstance(items, list) else []
            for item in messages:
                total += _responses_item_cost(item, c)
            return total
        elif api == "dashscope_generation":
            inp = body.get("input")
            messages_obj = inp.get("messages") if isinstance(inp, dict) else None
            for message in messages_obj if isinstance(messages_obj, list) else ():
                total += _message_cost(message, c)
            return total
        messages_list = body.get("messages")
        for message in messages_list if isinstance(messages_list, list) else ():
            total += _message_cost(message, c)
        return total


def _message_cost(message: object, c: FamilyCosts) -> float:
    if not isinstance(message, dict):
        return 0.0
    total = c.per_message + _content_cost(message.get("content"), c)
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            total += _json_cost(call.get("function") if isinstance(call, dict) else call, c) + 3 * c.per_block
    return total


def _responses_item_cost(item: object, c: FamilyCosts) -> float:
    if not isinstance(item, dict):
        return 0.0
    kind = item.get("type")
    if kind in (None, "message"):
        return c.per_message + _content_cost(item.get("content"), c)
    if kind == "function_call":
        return (
            _json_cost(item.get("arguments"), c) + _text_cost(str(item.get("name", "")), c) + 4 * c.per_block
        )
    if kind == "function_call_output":
        return _json_cost(item.get("output"), c) + 4 * c.per_block
    if kind == "reasoning":
        return 0.0
    return _json_cost(item, c)


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
        "_ratio",
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
        self._track = estimator.tokenizer(family) is not None
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
                # exactly as _block_cost would, without its chain of type tests.
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
                    len(text) / self._ascii_cpt if text.isascii() else _text_cost(text, self._c)
                ) + self._per_block
            elif kind == "tool_result" and type(content := block.get("content")) is str:
                # Fast paths for the agent-loop blocks; same arithmetic as _block_cost.
                cost = (
                    len(content) / self._ascii_cpt if content.isascii() else _text_cost(content, self._c)
                ) + 3 * self._per_block
            elif kind == "tool_use":
                inp = block.get("input")
                if type(inp) is dict:
                    try:
                        args = len(orjson.dumps(inp)) / self._json_cpt
                    except TypeError:
                        args = 0.0
                else:
                    args = _json_cost(inp, self._c)
                name = block.get("name", "")
                if type(name) is str and name.isascii():
                    cost = args + len(name) / self._ascii_cpt + 3 * self._per_block
                else:
                    cost = args + _text_cost(str(name), self._c) + 3 * self._per_block
            else:
                cost = _block_cost(block, self._c)
        elif type(block) is str:
            text = block
            cost = len(block) / self._ascii_cpt if block.isascii() else _text_cost(block, self._c)
        else:
            cost = _block_cost(block, self._c)
        self.raw += cost
        if self._track and type(text) is str and cost > 0:
            self._parts.append(text)
            self._costs.append(cost)
            self._cums.append(self.raw)
        return self.raw

    def add_text(self, text: str) -> float:
        """Add the text of a text block; returns the running raw total."""
        cost = (
            len(text) / self._ascii_cpt if text.isascii() else _text_cost(text, self._c)
        ) + self._per_block
        self.raw += cost
        if self._track and cost > 0:
            self._parts.append(text)
            self._costs.append(cost)
            self._cums.append(self.raw)
        return self.raw

    def add_json(self, value: object) -> float:
        """Add a structured value (tool schema, tool call) measured through its JSON."""
        self.raw += _json_cost(value, self._c)
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
        tok = self._est.tokenizer(self._family)
        if tok is None:
            return est >= threshold
        precise = raw_through
        for i, cum in enumerate(self._cums):
            if cum > raw_through:
                break
            if i == len(self._precise):
                self._precise.append(tok(self._parts[i]))
            precise += self._precise[i] - self._costs[i]
        # The tokenizer counts exactly; the calibration ratio only corrects the cheap part.
        return precise >= threshold
