"""Price tables as data, and the money of one request: cost, cache savings, write premium.

Prices are per million tokens, looked up by the longest matching model-id prefix. A
model with no price gets no cost (never a made-up one): its tokens are still counted,
and cachewatch warns once per model. Tables load from TOML, YAML or JSON files and can
be built in code; user entries override the defaults.

For a request with partition (input, cache_read, w5m, w1h, output) and price p:

- cost          = p.input * (input + read_mult*cache_read + w5m_mult*w5m + w1h_mult*w1h) + p.output*output
- savings       = p.input * (1 - read_mult) * cache_read       (what the read discount saved)
- write_premium = p.input * ((w5m_mult - 1)*w5m + (w1h_mult - 1)*w1h)   (extra paid to write)

Two cache modes, one price: a provider whose implicit (automatic) cache is priced apart
from its explicit one gets ``implicit_read``. DashScope is one (research B.1, F): explicit
writes 125 % and reads 10 % of the input price, implicit hits 20 % and no write premium,
and one request uses one mode or the other. ``cost(..., implicit=True)`` then reads at
``implicit_read`` and writes at the base price; a price without ``implicit_read`` prices
both modes alike (Anthropic has no implicit cache; OpenAI's automatic cache is its only
one and ``read`` is its rate).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._records import Cost, TokenUsage, new_cost

__all__ = ["DEFAULT_PRICES", "Cost", "Price", "PriceTable"]

_log = logging.getLogger("cachewatch")

#: Models already warned about, process-wide (every table, every ``wrap()``), capped.
_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()
_WARN_CAP = 100
#: Longest model name quoted in the warning (a model name is caller-controlled text).
_NAME_CHARS = 64


def _warn_unpriced(model: str) -> None:
    """Warn once per model per process that it has no price; the name is truncated."""
    with _WARNED_LOCK:
        if model in _WARNED or len(_WARNED) > _WARN_CAP:
            return
        _WARNED.add(model)
        if len(_WARNED) > _WARN_CAP:
            _log.warning("cachewatch has no price for %d models; no further price warnings", _WARN_CAP)
            return
    shown = model if len(model) <= _NAME_CHARS else model[: _NAME_CHARS - 1] + "…"
    _log.warning("cachewatch has no price for model %r: tokens are counted, cost is unknown", shown)


_PER_MILLION = 1_000_000.0


@dataclass(frozen=True, slots=True)
class Price:
    """List prices of one model family, per million tokens."""

    input: float
    output: float
    write_5m: float = 1.25
    write_1h: float = 2.0
    read: float = 0.1
    currency: str = "USD"
    #: Read multiplier of the provider's implicit cache when it is priced apart (DashScope: 0.2);
    #: implicit writes then cost the base price. None: one rate for every cache read.
    implicit_read: float | None = None


#: Defaults: Anthropic list prices (research A.6, mid-2026) and Alibaba Cloud Model Studio
#: international list prices for Qwen (explicit cache: write 125%, read 10%; implicit cache:
#: hits 20%, no write premium; research B.1). Check them against your contract and override
#: with ``PriceTable.from_file``.
DEFAULT_PRICES: Mapping[str, Price] = {
    # Anthropic
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-6": Price(5.0, 25.0),
    "claude-opus-4-7": Price(5.0, 25.0),
    "claude-opus-4-8": Price(5.0, 25.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-opus-4-0": Price(15.0, 75.0),
    "claude-opus-4-2": Price(15.0, 75.0),
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-sonnet-5": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    "claude-fable-5": Price(10.0, 50.0),
    "claude-mythos-5": Price(10.0, 50.0),
    # Qwen on DashScope (international deployment)
    "qwen3-max": Price(1.2, 6.0, implicit_read=0.2),
    "qwen3.7-max": Price(1.2, 6.0, implicit_read=0.2),
    "qwen-max": Price(1.6, 6.4, implicit_read=0.2),
    "qwen3.5-plus": Price(0.4, 2.4, implicit_read=0.2),
    "qwen3.6-plus": Price(0.4, 2.4, implicit_read=0.2),
    "qwen3.7-plus": Price(0.4, 2.4, implicit_read=0.2),
    "qwen-plus": Price(0.4, 1.2, implicit_read=0.2),
    "qwen3.5-flash": Price(0.05, 0.4, implicit_read=0.2),
    "qwen-flash": Price(0.05, 0.4, implicit_read=0.2),
    "qwen3-coder-plus": Price(1.0, 5.0, implicit_read=0.2),
    "qwen3-coder-flash": Price(0.3, 1.5, implicit_read=0.2),
    "qwen3-vl-plus": Price(0.2, 1.6, implicit_read=0.2),
}


_PRICE_FIELDS = ("input", "output", "write_5m", "write_1h", "read", "implicit_read")


def _price_of(prefix: str, fields: Any) -> Price:
    """A :class:`Price` from one file entry, checked: every price a finite number >= 0.

    A number written as a string is accepted (YAML 1.1 reads ``3e-6`` as one); anything
    else (NaN, a negative price, text, an unknown key) is refused when the file loads,
    instead of failing or poisoning the cost counters on every request.
    """
    if not isinstance(fields, Mapping):
        raise ValueError(f"prices: {prefix!r} must map to a table of prices, not {type(fields).__name__}")
    values: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "currency":
            if not isinstance(value, str) or not value:
                raise ValueError(f"prices: {prefix!r}: currency must be a non-empty string")
            values[key] = value
        elif key in _PRICE_FIELDS:
            if value is None and key == "implicit_read":
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(f"prices: {prefix!r}: {key} must be a number, not {value!r}")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"prices: {prefix!r}: {key} must be a number, not {value!r}") from None
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"prices: {prefix!r}: {key} must be a finite number >= 0, not {value!r}")
            values[key] = number
        else:
            raise ValueError(
                f"prices: {prefix!r}: unknown field {key!r} (fields: {', '.join(_PRICE_FIELDS)}, currency)"
            )
    missing = [key for key in ("input", "output") if key not in values]
    if missing:
        raise ValueError(f"prices: {prefix!r}: missing {' and '.join(missing)}")
    return Price(**values)


@dataclass
class PriceTable:
    """Model-id prefix -> :class:`Price`; the longest matching prefix wins.

    Example::

        prices = PriceTable.from_file("prices.toml")          # merged over the defaults
        prices = PriceTable({"my-model": Price(1.0, 2.0)})    # code, merged likewise
    """

    entries: Mapping[str, Price] = field(default_factory=dict)
    include_defaults: bool = True

    def __post_init__(self) -> None:
        merged: dict[str, Price] = dict(DEFAULT_PRICES) if self.include_defaults else {}
        merged.update(self.entries)
        # Model ids are matched case-insensitively (``_find`` lowercases them), so the
        # prefixes are too: a user prefix written as the provider spells the model
        # (``Qwen/Qwen3-Coder``, ``MyCorp-Model``) must match it.
        lowered: dict[str, Price] = {}
        for prefix, price in merged.items():
            lowered[prefix.lower()] = price
        self._prices = dict(sorted(lowered.items(), key=lambda kv: -len(kv[0])))
        self._cache: dict[str, Price | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, include_defaults: bool = True) -> PriceTable:
        """Build from ``{"models": {prefix: {input, output, write_5m?, write_1h?, read?, currency?, implicit_read?}}}``."""
        models = data.get("models", data)
        if not isinstance(models, Mapping):
            raise ValueError("prices: 'models' holds a mapping of model prefixes to prices")
        entries = {str(prefix): _price_of(str(prefix), fields) for prefix, fields in models.items()}
        return cls(entries, include_defaults=include_defaults)

    @classmethod
    def from_file(cls, path: str | Path, *, include_defaults: bool = True) -> PriceTable:
        """Load a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON file."""
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        data: Any
        if p.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            from .._extras import require

            require("a YAML price file", "yaml", "yaml")
            import yaml

            data = yaml.safe_load(text)
        else:
            import orjson

            data = orjson.loads(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"{p}: a price file holds a mapping of model prefixes to prices")
        return cls.from_mapping(data, include_defaults=include_defaults)

    def lookup(self, model: str | None) -> Price | None:
        """The price of ``model`` (longest prefix); warns once per model that has none."""
        if not model:
            return None
        found = self._cache[model] if model in self._cache else self._find(model)
        if found is None:
            # Also when the miss was cached by ``prices_implicit_apart`` (which the engine
            # asks first, for every request): the warning is once per model per process.
            _warn_unpriced(model)
        return found

    def prices_implicit_apart(self, model: str | None) -> bool:
        """Whether ``model``'s implicit cache has its own read price (no warning if unpriced)."""
        if not model:
            return False
        found = self._cache[model] if model in self._cache else self._find(model)
        return found is not None and found.implicit_read is not None

    def _find(self, model: str) -> Price | None:
        key = model.lower()
        found = next((price for prefix, price in self._prices.items() if key.startswith(prefix)), None)
        with self._lock:
            if len(self._cache) < 4096:
                self._cache[model] = found
        return found

    def cost(self, model: str | None, usage: TokenUsage, *, implicit: bool = False) -> Cost | None:
        """The money of ``usage``; ``implicit``: the provider's implicit cache served it."""
        price = self.lookup(model)
        if price is None:
            return None
        read, write_5m, write_1h = price.read, price.write_5m, price.write_1h
        if implicit and price.implicit_read is not None:
            read, write_5m, write_1h = price.implicit_read, 1.0, 1.0
        base = price.input / _PER_MILLION
        total = (
            base
            * (
                usage.input
                + read * usage.cache_read
                + write_5m * usage.cache_write_5m
                + write_1h * usage.cache_write_1h
            )
            + price.output / _PER_MILLION * usage.output
        )
        savings = base * (1.0 - read) * usage.cache_read
        premium = base * ((write_5m - 1.0) * usage.cache_write_5m + (write_1h - 1.0) * usage.cache_write_1h)
        return new_cost(total, savings, premium, price.currency)
