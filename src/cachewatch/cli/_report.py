"""``cachewatch report``: cache economics per workspace and per model, from a ``/metrics`` page.

Reads a Prometheus exposition (a URL such as ``http://127.0.0.1:9464/metrics``, or the
text itself), parses it with ``prometheus_client.parser`` and sums the ``cachewatch_*``
counters over every other label:

* requests, tokens by type (``input`` uncached, ``cache_read``, ``cache_write_5m``,
  ``cache_write_1h``, ``output``) and the hit ratio ``cache_read / prompt`` where
  prompt = input + cache_read + writes;
* requests whose usage the provider did not report (``cachewatch_usage_unreported_total``):
  their tokens and money are unknown, so the totals above leave them out, and the
  report says so rather than letting them read as zero;
* money per currency: cost, savings (what the read discount saved), write premium
  (the extra paid to write) and net savings = savings - write premium;
* wasted-write tokens (``cachewatch_cache_wasted_write_tokens_total``, writes never read
  within their TTL) and the top miss reasons (``cachewatch_cache_misses_total``; that
  counter has no workspace label, so reasons appear per model and overall);
* the prompt advice (``cachewatch_volatile_prefix_tokens_total``): per model, the block that
  changes on every request while the blocks after it stay the same, and the tokens per
  request that would become cacheable if it moved after the stable part;
* shadow mode (``cachewatch_shadow_cost_total``, ``cachewatch_shadow_tokens_total``, from
  ``breakpoints="shadow"``): per workspace and model, the real cost of the shadowed traffic
  (``cachewatch_cost_total`` of the same provider, model and workspace series), what it
  would have cost with ``breakpoints="auto"``, the projected saving and the hit ratio each
  way, with :data:`SHADOW_NOTE` saying what the estimate assumes.

:func:`summarise` is pure (text in, dict out); :func:`report` prints it as rich tables
(``format="table"``: on a terminal at its width, and when piped at the tables' natural
width, without colour, so no column is cut) or as one JSON document (``format="json"``,
which needs no extra).
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

__all__ = ["SHADOW_NOTE", "ExpositionError", "report", "summarise"]

TOKEN_TYPES = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output")
_MONEY = {
    "cachewatch_cost_total": "cost",
    "cachewatch_cache_savings_total": "savings",
    "cachewatch_cache_write_premium_total": "write_premium",
}
_WASTED = "cachewatch_cache_wasted_write_tokens_total"
_UNREPORTED = "cachewatch_usage_unreported_total"
_VOLATILE = "cachewatch_volatile_prefix_tokens_total"
_SHADOW_COST = "cachewatch_shadow_cost_total"
_SHADOW_TOKENS = "cachewatch_shadow_tokens_total"

#: What the shadow estimate assumes, printed under its table (and in the JSON document).
SHADOW_NOTE = (
    "Shadow estimate: these requests went out unchanged; 'with auto' is cachewatch's simulation of "
    "the provider's cache for the markers auto would have placed, at the same times, calibrated to the "
    "prompt totals really billed. It assumes the provider honours every marker and keeps each entry "
    "for its whole TTL (no eviction); a block's share of its prompt is a local estimate (exact where "
    "the prefix was a whole earlier prompt); and each process simulates only its own traffic (several "
    "processes share one provider cache, so there the saving is underestimated)."
)


class ExpositionError(ValueError):
    """The text is not a Prometheus text exposition (an HTML page, a truncated scrape...)."""


def _group() -> dict[str, Any]:
    return {
        "requests": 0.0,
        "usage_unreported": 0.0,
        "tokens": dict.fromkeys(TOKEN_TYPES, 0.0),
        "cost": {},
        "savings": {},
        "write_premium": {},
        "wasted_write_tokens": 0.0,
        "miss_reasons": Tally(),
        "volatile_prefix_tokens": Tally(),
    }


def _shadow_group() -> dict[str, Any]:
    return {
        "real_cost": {},
        "shadow_cost": {},
        "tokens": dict.fromkeys(TOKEN_TYPES, 0.0),
        "real_tokens": dict.fromkeys(TOKEN_TYPES, 0.0),
    }


def _hit_ratio(tokens: dict[str, float]) -> float:
    prompt = sum(tokens[t] for t in TOKEN_TYPES if t != "output")
    return tokens["cache_read"] / prompt if prompt else 0.0


def summarise(text: str) -> dict[str, Any]:
    """Totals per workspace, per model and overall from an exposition text.

    Returns ``{"workspaces": {name: group}, "models": {name: group}, "total": group}``
    where a group has ``requests``, ``usage_unreported`` (requests without usage), ``tokens`` (by type), ``hit_ratio``, ``cost``,
    ``savings``, ``write_premium`` and ``net_savings`` (each ``{currency: amount}``),
    ``wasted_write_tokens``, ``miss_reasons`` (``[(reason, count)]``, most first) and
    ``prefix_advice`` (``[{"block", "tokens", "tokens_per_request"}]``, most tokens first:
    the volatile blocks and what moving each after the stable part would make cacheable,
    in total and on average over the group's requests), and ``shadow``: None without shadow
    mode, else ``{"real_cost", "shadow_cost", "projected_saving"}`` (each ``{currency: amount}``:
    the real cost of the shadowed series, what ``auto`` would have cost, their difference),
    ``saving_share`` (``{currency: share of the real cost}``), ``tokens`` (what ``auto`` would
    have been billed, by type), ``hit_ratio`` (real) and ``hit_ratio_auto`` (estimated).
    A shadow cost series whose real cost series is absent is left out of the money
    comparison (counted in the document's ``shadow_unmatched_series``), never compared with 0.

    Raises :class:`ExpositionError` when ``text`` is not a Prometheus text exposition.
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        # The parser is lazy: a bad line deep in the text fails only when reached.
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ExpositionError(f"not a Prometheus text exposition ({exc})") from exc

    workspaces: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    total = _group()

    def groups(labels: dict[str, str]) -> list[dict[str, Any]]:
        out = [total]
        if "workspace" in labels:
            out.append(workspaces.setdefault(labels["workspace"], _group()))
        if "model" in labels:
            out.append(models.setdefault(labels["model"], _group()))
        return out

    # Shadow mode is compared series by series: the real cost and tokens of exactly the
    # series it shadowed, matched on every label (a real series and its shadow have the
    # same ones): in a text of several processes (``instance``, ``job``...) a shadowed
    # process is compared with its own real cost, never with its neighbours' on auto.
    costs: dict[tuple[tuple[str, str], ...], float] = {}
    shadow_costs: dict[tuple[tuple[str, str], ...], float] = {}
    real_tokens: dict[tuple[tuple[str, str], ...], float] = {}
    shadow_tokens: dict[tuple[tuple[str, str], ...], float] = {}

    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if not name.endswith("_total"):
                continue
            if name in ("cachewatch_cost_total", _SHADOW_COST):
                series = tuple(sorted(labels.items()))
                found = costs if name == "cachewatch_cost_total" else shadow_costs
                found[series] = found.get(series, 0.0) + value
            elif name in ("cachewatch_tokens_total", _SHADOW_TOKENS):
                series = tuple(sorted(labels.items()))
                found = real_tokens if name == "cachewatch_tokens_total" else shadow_tokens
                found[series] = found.get(series, 0.0) + value
            if name in (_SHADOW_COST, _SHADOW_TOKENS):
                continue
            if name == "cachewatch_requests_total":
                for g in groups(labels):
                    g["requests"] += value
            elif name == "cachewatch_tokens_total":
                kind = labels.get("type", "")
                if kind in TOKEN_TYPES:
                    for g in groups(labels):
                        g["tokens"][kind] += value
            elif name in _MONEY:
                key = _MONEY[name]
                currency = labels.get("currency", "")
                for g in groups(labels):
                    g[key][currency] = g[key].get(currency, 0.0) + value
            elif name == _UNREPORTED:
                for g in groups(labels):
                    g["usage_unreported"] += value
            elif name == _WASTED:
                for g in groups(labels):
                    g["wasted_write_tokens"] += value
            elif name == "cachewatch_cache_misses_total":
                for g in groups(labels):
                    g["miss_reasons"][labels.get("reason", "other")] += value
            elif name == _VOLATILE:
                for g in groups(labels):
                    g["volatile_prefix_tokens"][labels.get("block", "other")] += value

    shadows: dict[int, dict[str, Any]] = {}
    unmatched = 0  # shadow cost series without their real cost series

    def shadow_groups(workspace: str, model: str) -> list[dict[str, Any]]:
        out = [total]
        if workspace in workspaces:
            out.append(workspaces[workspace])
        if model in models:
            out.append(models[model])
        return [shadows.setdefault(id(g), _shadow_group()) for g in out]

    for series, amount in shadow_costs.items():
        real = costs.get(series)
        if real is None:
            # The real cost of this series is not in the text (dropped by a relabelling, a
            # partial scrape): no comparison, rather than a real cost of 0 and a negative saving.
            unmatched += 1
            continue
        labels = dict(series)
        currency = labels.get("currency", "")
        for sg in shadow_groups(labels.get("workspace", ""), labels.get("model", "")):
            sg["shadow_cost"][currency] = sg["shadow_cost"].get(currency, 0.0) + amount
            sg["real_cost"][currency] = sg["real_cost"].get(currency, 0.0) + real
    for series, n in shadow_tokens.items():
        labels = dict(series)
        kind = labels.get("type", "")
        if kind not in TOKEN_TYPES:
            continue
        real_n = real_tokens.get(series, 0.0)
        for sg in shadow_groups(labels.get("workspace", ""), labels.get("model", "")):
            sg["tokens"][kind] += n
            sg["real_tokens"][kind] += real_n

    def finish_shadow(g: dict[str, Any]) -> dict[str, Any] | None:
        sg = shadows.get(id(g))
        if sg is None:
            return None
        real, est = sg["real_cost"], sg["shadow_cost"]
        saving = {c: real.get(c, 0.0) - est.get(c, 0.0) for c in sorted(set(real) | set(est))}
        return {
            "real_cost": dict(sorted(real.items())),
            "shadow_cost": dict(sorted(est.items())),
            "projected_saving": saving,
            "saving_share": {c: saving[c] / real[c] for c in saving if real.get(c)},
            "tokens": sg["tokens"],
            "hit_ratio": _hit_ratio(sg["real_tokens"]),
            "hit_ratio_auto": _hit_ratio(sg["tokens"]),
        }

    def finish(g: dict[str, Any]) -> dict[str, Any]:
        g["shadow"] = finish_shadow(g)
        tokens = g["tokens"]
        g["hit_ratio"] = _hit_ratio(tokens)
        currencies = set(g["savings"]) | set(g["write_premium"])
        g["net_savings"] = {
            c: g["savings"].get(c, 0.0) - g["write_premium"].get(c, 0.0) for c in sorted(currencies)
        }
        g["miss_reasons"] = [(r, n) for r, n in g["miss_reasons"].most_common() if n > 0]
        requests = g["requests"]
        g["prefix_advice"] = [
            {"block": block, "tokens": n, "tokens_per_request": n / requests if requests else 0.0}
            for block, n in g.pop("volatile_prefix_tokens").most_common()
            if n > 0
        ]
        return g

    return {
        "workspaces": {k: finish(v) for k, v in sorted(workspaces.items())},
        "models": {k: finish(v) for k, v in sorted(models.items())},
        "total": finish(total),
        "shadow_note": SHADOW_NOTE if shadows else None,
        "shadow_unmatched_series": unmatched,
    }


def _plain(value: Any) -> Any:
    """The summary for JSON: whole numbers as integers (counters are floats in an
    exposition) and the rest to 12 significant digits, so that sums print as written
    (``0.0045``, not ``0.0045000000000000005``)."""
    if type(value) is float:
        if value.is_integer():
            return int(value)
        return float(f"{value:.12g}")
    if type(value) is dict:
        return {k: _plain(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return [_plain(v) for v in value]
    return value


def _console(stream: Any) -> tuple[Any, Any]:
    """A rich console for ``stream`` (default stdout), and what ends its output.

    On a terminal, the terminal's width; a reader that goes away (``| head`` in a pager)
    raises ``BrokenPipeError`` for the CLI to end quietly with status 0 (rich's own
    handler exits with 1). Otherwise (a pipe, a file) the tables are rendered at their
    natural width, without colour, so no column is cut, and written out at the end with
    the trailing spaces of rich's padding removed.
    """
    import io
    import sys

    from .._extras import require

    require("cachewatch report", "cli", "rich", alternative="--format json, which needs no extra")
    from rich.console import Console

    file = stream if stream is not None else sys.stdout
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():

        class _Console(Console):
            def on_broken_pipe(self) -> None:
                self.quiet = True
                raise BrokenPipeError

        return _Console(file=file), None
    buffer = io.StringIO()

    def flush() -> None:
        file.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
        file.flush()

    return Console(file=buffer, width=1_000, color_system=None, highlight=False), flush


def _money(amounts: dict[str, float]) -> str:
    if not amounts:
        return "-"
    return ", ".join(f"{amount:,.4f} {currency}" for currency, amount in sorted(amounts.items()))


def _tokens(n: float) -> str:
    return f"{int(n):,}"


def _tables(title: str, key: str, rows: dict[str, dict[str, Any]], reasons: bool) -> tuple[Any, Any]:
    """Two tables for one grouping: its tokens, and its money, wasted writes and misses.

    One table of all fourteen columns is about 170 characters wide, so a terminal of 120
    would cut every money cell; each of these fits one. Numbers are never wrapped or cut
    (``no_wrap``); names and miss reasons fold onto more lines when space is short.
    """
    from rich.table import Table

    tokens = Table(title=f"{title}: tokens", title_justify="left")
    tokens.add_column(key, no_wrap=True)
    for column in (
        "requests",
        "no usage",
        "input",
        "cache read",
        "write 5m",
        "write 1h",
        "output",
        "hit ratio",
    ):
        tokens.add_column(column, justify="right", no_wrap=True)
    money = Table(title=f"{title}: money and misses", title_justify="left")
    money.add_column(key, no_wrap=True)
    for column in ("cost", "savings", "write premium", "net savings", "wasted write tok"):
        money.add_column(column, justify="right", no_wrap=True)
    if reasons:
        money.add_column("top miss reasons", no_wrap=True)
    for name, g in rows.items():
        t = g["tokens"]
        tokens.add_row(
            name,
            _tokens(g["requests"]),
            _tokens(g["usage_unreported"]),
            _tokens(t["input"]),
            _tokens(t["cache_read"]),
            _tokens(t["cache_write_5m"]),
            _tokens(t["cache_write_1h"]),
            _tokens(t["output"]),
            f"{g['hit_ratio']:.1%}",
        )
        cells = [
            name,
            _money(g["cost"]),
            _money(g["savings"]),
            _money(g["write_premium"]),
            _money(g["net_savings"]),
            _tokens(g["wasted_write_tokens"]),
        ]
        if reasons:
            cells.append(", ".join(f"{r} ({int(n)})" for r, n in g["miss_reasons"][:3]) or "-")
        money.add_row(*cells)
    return tokens, money


def _shadow_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(
        title="Shadow mode: what breakpoints=auto would have cost on the same requests",
        title_justify="left",
    )
    table.add_column("", no_wrap=True)
    table.add_column("name", no_wrap=True)
    for column in (
        "real cost",
        "with auto (est.)",
        "projected saving",
        "saving",
        "hit ratio",
        "auto hit ratio",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    for kind, rows in (("workspace", summary["workspaces"]), ("model", summary["models"])):
        for name, g in rows.items():
            sh = g["shadow"]
            if sh is None:
                continue
            shares = sorted(sh["saving_share"].items())
            # One currency (the usual case): the share alone; several: the share in each.
            share = (
                f"{shares[0][1]:.1%}"
                if len(shares) == 1
                else ", ".join(f"{v:.1%} {c}" for c, v in shares) or "-"
            )
            table.add_row(
                kind,
                name,
                _money(sh["real_cost"]),
                _money(sh["shadow_cost"]),
                _money(sh["projected_saving"]),
                share,
                f"{sh['hit_ratio']:.1%}",
                f"{sh['hit_ratio_auto']:.1%}",
            )
    return table


def _advice_table(advice: dict[str, list[dict[str, Any]]]) -> Any:
    from rich.table import Table

    table = Table(
        title="Prompt advice: a block that changes on every request cuts the cacheable prefix short; "
        "move it after the stable part (a tool: last among the tools; tools:order: give the tools one order)",
        title_justify="left",
    )
    table.add_column("model", no_wrap=True)
    table.add_column("volatile block", no_wrap=True)
    table.add_column("cacheable tok/request", justify="right", no_wrap=True)
    table.add_column("cacheable tok (total)", justify="right", no_wrap=True)
    for model, rows in advice.items():
        for row in rows:
            table.add_row(model, row["block"], _tokens(row["tokens_per_request"]), _tokens(row["tokens"]))
    return table


def report(
    url_or_text: str,
    *,
    console: Any = None,
    timeout: float = 10.0,
    format: str = "table",
    stream: Any = None,
) -> None:
    """Print the per-workspace and per-model summary of a ``/metrics`` URL or exposition text.

    ``format`` is ``"table"`` (rich tables on ``console``, or on a console for ``stream``,
    default stdout) or ``"json"`` (one JSON document on ``stream``).
    """
    text = url_or_text
    if url_or_text.startswith(("http://", "https://")):
        import httpx

        response = httpx.get(url_or_text, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
        text = response.text
    summary = summarise(text)
    if format == "json":
        import sys

        import orjson

        out_stream = stream if stream is not None else sys.stdout
        out_stream.write(orjson.dumps(_plain(summary), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if format != "table":
        raise ValueError(f"format must be 'table' or 'json', not {format!r}")
    flush = None
    if console is not None:
        out = console
    else:
        out, flush = _console(stream)
    _print_tables(out, summary)
    if flush is not None:
        flush()


def _print(out: Any, table: Any) -> None:
    """A table, never cut: one wider than the console is printed at its own width (the
    terminal wraps its lines) rather than with every cell shortened to "…"."""
    from rich.measure import Measurement

    width = Measurement.get(out, out.options.update_width(10_000), table).maximum
    if width <= out.width:
        out.print(table)
        return
    narrow = out.width
    out.width = width  # print() never renders wider than the console
    try:
        out.print(table, crop=False)
    finally:
        out.width = narrow


def _print_tables(out: Any, summary: dict[str, Any]) -> None:
    if not summary["models"] and not summary["workspaces"]:
        out.print("No cachewatch metrics found.")
        return
    for table in (
        *_tables("Per workspace", "workspace", summary["workspaces"], reasons=False),
        *_tables("Per model", "model", summary["models"], reasons=True),
    ):
        _print(out, table)
    unreported = int(summary["total"]["usage_unreported"])
    if unreported:
        out.print(
            f"{unreported:,} requests ended ok without reporting usage ('no usage'): their tokens and cost "
            "are unknown, not zero. Ask for usage: stream_options.include_usage, "
            "wrap(client, include_usage=True) or cachewatch proxy --include-usage."
        )
    if summary["shadow_note"] is not None:
        _print(out, _shadow_table(summary))
        out.print(summary["shadow_note"])
    if summary["shadow_unmatched_series"]:
        out.print(
            f"{summary['shadow_unmatched_series']:,} cachewatch_shadow_cost_total series have no "
            "cachewatch_cost_total series to compare with and are left out of the comparison."
        )
    advice = {model: g["prefix_advice"] for model, g in summary["models"].items() if g["prefix_advice"]}
    if advice:
        _print(out, _advice_table(advice))
    top = summary["total"]["miss_reasons"]
    if top:
        out.print("Top miss reasons: " + ", ".join(f"{r} ({int(n)})" for r, n in top[:5]))
