"""``cachewatch replay FILE``: a recorded traffic shape through every marker strategy, as a table.

The file comes from ``cachewatch proxy --record FILE`` or ``wrap(client, record=FILE)``
(``cachewatch.simulation._shape``); the replay itself is ``cachewatch.simulation._replay``.
Plain text (no extra needed) or one JSON document.
"""

from __future__ import annotations

from typing import IO, Any

from ..simulation._replay import FIXED, ReplayResult, Totals

__all__ = ["render_json", "render_table", "summary"]

_NOTE = (
    "Every strategy is billed by the emulator's cache model on the recorded shape: prefixes as recorded, "
    "sizes as the provider billed them, the profile's minimum and 20-position lookback, TTLs refreshed on "
    "a hit, writes readable once their response started; no eviction. 'recorded' is what was really "
    "billed; 'off' is the same requests through the cache model (the two differ where the provider's "
    "own automatic cache served requests, which is not modelled)."
)


def _money(cost: dict[str, float]) -> str:
    if not cost:
        return "-"
    return ", ".join(f"{amount:,.4f} {currency}" for currency, amount in sorted(cost.items()))


def _row(name: str, t: Totals, base: float) -> dict[str, Any]:
    return {
        "strategy": name,
        "requests": t.requests,
        "input": t.input,
        "cache_read": t.cache_read,
        "cache_write_5m": t.cache_write_5m,
        "cache_write_1h": t.cache_write_1h,
        "output": t.output,
        "units": round(t.units, 1),
        "cost": {c: round(v, 6) for c, v in sorted(t.cost.items())},
        "vs_off": round(t.units / base, 4) if base else None,
        "unpriced": t.unpriced,
    }


def summary(result: ReplayResult) -> dict[str, Any]:
    """The comparison as plain data: rows, the best fixed strategy, auto against it."""
    off = result.strategies.get("off")
    base = off.units if off is not None else result.recorded.units
    rows = [_row("recorded", result.recorded, base)]
    rows += [_row(name, totals, base) for name, totals in result.strategies.items()]
    fixed: list[str] = [s for s in FIXED if s in result.strategies and result.strategies[s].requests]
    best: str | None = (
        min(fixed, key=lambda s: (result.strategies[s].units, fixed.index(s))) if fixed else None
    )
    auto = result.strategies.get("auto")
    ratio = None
    if best is not None and auto is not None and result.strategies[best].units:
        ratio = round(auto.units / result.strategies[best].units, 4)
    return {
        "rows": rows,
        "best_fixed": best,
        "auto_vs_best_fixed": ratio,
        "as_recorded": result.as_recorded,
        "misaligned": result.misaligned,
        "note": _NOTE,
    }


def render_json(result: ReplayResult, stream: IO[str]) -> None:
    import orjson

    stream.write(orjson.dumps(summary(result), option=orjson.OPT_INDENT_2).decode() + "\n")


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["strategy"],
        f"{row['requests']:,}",
        f"{row['input']:,}",
        f"{row['cache_read']:,}",
        f"{row['cache_write_5m']:,}",
        f"{row['cache_write_1h']:,}",
        f"{row['units'] / 1000:,.1f}",
        _money(row["cost"]),
        "-" if row["vs_off"] is None else f"{row['vs_off']:.3f}x",
    ]


def render_table(result: ReplayResult, stream: IO[str]) -> None:
    data = summary(result)
    head = [
        "strategy",
        "requests",
        "input",
        "cache read",
        "write 5m",
        "write 1h",
        "units (k)",
        "cost",
        "vs off",
    ]
    lines = [head, *(_cells(row) for row in data["rows"])]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)
        ]
        stream.write("  ".join(cells).rstrip() + "\n")
        if n == 0:
            stream.write("  ".join("-" * w for w in widths) + "\n")
    stream.write("\n")
    stream.write(
        "units: net input cost in tokens (input 1, 5m write 1.25, 1h write 2, read 0.1); cost includes output.\n"
    )
    if data["best_fixed"] is not None and data["auto_vs_best_fixed"] is not None:
        stream.write(
            f"best fixed strategy: {data['best_fixed']}; auto / best fixed = {data['auto_vs_best_fixed']:.3f}x\n"
        )
    if data["as_recorded"]:
        stream.write(
            f"{data['as_recorded']:,} exchanges went to endpoints without markers (or an unknown profile) "
            "and count as recorded under every strategy.\n"
        )
    if data["misaligned"]:
        stream.write(
            f"{data['misaligned']:,} exchanges could not be rebuilt for auto and count as recorded there.\n"
        )
    unpriced = result.recorded.unpriced
    if unpriced:
        stream.write(f"{unpriced:,} exchanges name a model without a price: tokens only (pass --prices).\n")
    stream.write(_NOTE + "\n")
