"""PromQL building blocks that check every metric and label against the catalogue.

A panel or rule never spells a metric name on its own: it asks :func:`sel` (or
:func:`counter`/:func:`bucket`) for it, which looks the metric up with
:func:`cachewatch.sinks._catalogue.metric` and rejects label matchers on labels the metric
does not carry. A renamed metric or label therefore fails at generation time.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..sinks._catalogue import MetricSpec, metric

__all__ = [
    "PROMPT_TOKEN_TYPES",
    "TEMPLATE_LABELS",
    "RANGE",
    "RATE",
    "hit_ratio",
    "quantile",
    "sel",
    "spec",
    "sum_increase",
    "sum_rate",
]

#: Label -> Grafana template variable, applied to every metric that has the label.
TEMPLATE_LABELS = {
    "provider": "provider",
    "model": "model",
    "workspace": "workspace",
    "currency": "currency",
}

#: Grafana's rate window: at least four scrape intervals, and it follows the zoom level.
RATE = "$__rate_interval"
#: The dashboard's whole time range (stat and table panels).
RANGE = "$__range"

#: Token types that make up the prompt (the hit-ratio denominator, SPEC section 9).
PROMPT_TOKEN_TYPES = ("input", "cache_read", "cache_write_5m", "cache_write_1h")


def spec(name: str) -> MetricSpec:
    """The catalogue entry of ``name`` (KeyError for a metric the catalogue lacks)."""
    return metric(name)


def sel(
    name: str, where: Mapping[str, str] | None = None, *, templated: bool = True, series: str = ""
) -> str:
    """``name{...}``: template-variable matchers for the labels it has, plus ``where``.

    ``where`` maps a label to a complete matcher, e.g. ``{"outcome": '!="ok"'}`` or
    ``{"type": '="cache_read"'}``. ``series`` picks a histogram series (``_bucket``...).
    Without ``templated`` the template-variable matchers are left out (alert rules).
    """
    matchers = dict(where or {})
    s = metric(name)
    for label in matchers:
        if label not in s.labels:
            raise KeyError(f"{name} has no label {label!r} (labels: {', '.join(s.labels)})")
    parts: list[str] = []
    if templated:
        parts += [f'{label}=~"${var}"' for label, var in TEMPLATE_LABELS.items() if label in s.labels]
    parts += [f"{label}{m}" for label, m in matchers.items()]
    if series and s.kind != "histogram":
        raise ValueError(f"{name} is a {s.kind}, it has no {series} series")
    body = ", ".join(parts)
    return f"{name}{series}{{{body}}}" if body else f"{name}{series}"


def _check_by(name: str, by: tuple[str, ...]) -> None:
    labels = metric(name).labels
    for label in by:
        if label not in labels:
            raise KeyError(f"{name} has no label {label!r} to group by")


def hit_ratio(
    window: str, by: tuple[str, ...] = (), *, templated: bool = True, name: str = "cachewatch_tokens_total"
) -> str:
    """``cache_read / (input + cache_read + cache_write_5m + cache_write_1h)`` from a token counter
    (``cachewatch_tokens_total``, or ``cachewatch_shadow_tokens_total`` for what auto would have had)."""
    _check_by(name, by)
    grouping = f" by ({', '.join(by)})" if by else ""
    read = sel(name, {"type": '="cache_read"'}, templated=templated)
    prompt = sel(name, {"type": f'=~"{"|".join(PROMPT_TOKEN_TYPES)}"'}, templated=templated)
    return f"sum{grouping} (rate({read}[{window}]))\n/\nsum{grouping} (rate({prompt}[{window}]))"


def _grouping(name: str, by: tuple[str, ...]) -> str:
    _check_by(name, tuple(label for label in by if label != "le"))
    return f" by ({', '.join(by)})" if by else ""


def sum_rate(
    name: str, by: tuple[str, ...] = (), window: str = RATE, *, templated: bool = True, **matchers: str
) -> str:
    """``sum by (by) (rate(name{...}[window]))``."""
    return f"sum{_grouping(name, by)} (rate({sel(name, matchers, templated=templated)}[{window}]))"


def sum_increase(
    name: str, by: tuple[str, ...] = (), window: str = RANGE, *, templated: bool = True, **matchers: str
) -> str:
    """``sum by (by) (increase(name{...}[window]))``."""
    return f"sum{_grouping(name, by)} (increase({sel(name, matchers, templated=templated)}[{window}]))"


def quantile(q: float, name: str, by: tuple[str, ...] = (), window: str = RATE) -> str:
    """``histogram_quantile(q, ...)`` over the ``_bucket`` series of a catalogue histogram."""
    if metric(name).kind != "histogram":
        raise ValueError(f"{name} is not a histogram")
    grouping = _grouping(name, ("le", *by))
    return f"histogram_quantile({q:g}, sum{grouping} (rate({sel(name, series='_bucket')}[{window}])))"
