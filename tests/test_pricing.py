"""The price table and the money of one request, plus the demo's savings against a hand computation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cachewatch.accounting._pricing import DEFAULT_PRICES, Price, PriceTable
from cachewatch.accounting._records import TokenUsage

USAGE = TokenUsage(input=1_000, cache_read=20_000, cache_write_5m=3_000, cache_write_1h=2_000, output=500)


def _hand(p: Price, u: TokenUsage) -> tuple[float, float, float]:
    m = 1_000_000
    total = (
        u.input * p.input
        + u.cache_read * p.input * p.read
        + u.cache_write_5m * p.input * p.write_5m
        + u.cache_write_1h * p.input * p.write_1h
        + u.output * p.output
    ) / m
    savings = u.cache_read * p.input * (1 - p.read) / m
    premium = (
        u.cache_write_5m * p.input * (p.write_5m - 1) + u.cache_write_1h * p.input * (p.write_1h - 1)
    ) / m
    return total, savings, premium


@pytest.mark.parametrize("prefix", sorted(DEFAULT_PRICES))
def test_every_default_price(prefix: str) -> None:
    table = PriceTable()
    cost = table.cost(prefix + "-20260101", USAGE)
    assert cost is not None
    total, savings, premium = _hand(DEFAULT_PRICES[prefix], USAGE)
    assert cost.total == pytest.approx(total)
    assert cost.savings == pytest.approx(savings)
    assert cost.write_premium == pytest.approx(premium)
    assert cost.net_savings == pytest.approx(savings - premium)
    assert cost.currency == "USD"


def test_sonnet_mixed_5m_and_1h_writes_by_hand() -> None:
    # $3 input, $15 output; read 0.1x, 5m write 1.25x, 1h write 2x (research A.6).
    cost = PriceTable().cost("claude-sonnet-4-6", USAGE)
    assert cost is not None
    # 1000*3 + 20000*0.3 + 3000*3.75 + 2000*6 + 500*15 = 3000+6000+11250+12000+7500 = 39750 $/M
    assert cost.total == pytest.approx(0.03975)
    assert cost.savings == pytest.approx(20_000 * 2.7 / 1e6)  # 0.054
    assert cost.write_premium == pytest.approx((3_000 * 0.75 + 2_000 * 3.0) / 1e6)  # 0.00825


def test_longest_prefix_wins() -> None:
    table = PriceTable()
    assert table.lookup("claude-opus-4-5-20251101") == DEFAULT_PRICES["claude-opus-4-5"]
    assert table.lookup("qwen3.6-plus") == DEFAULT_PRICES["qwen3.6-plus"]
    assert table.lookup("qwen-plus-latest") == DEFAULT_PRICES["qwen-plus"]


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The once-per-process memory of warned models, empty (other tests fill it up)."""
    from cachewatch.accounting import _pricing

    monkeypatch.setattr(_pricing, "_WARNED", set())


@pytest.mark.usefixtures("fresh_warnings")
def test_unknown_model_no_cost_and_one_warning_per_process(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cachewatch"):
        for _ in range(3):  # three tables, as three wrap() calls make
            table = PriceTable()
            for _ in range(3):
                assert table.cost("mystery-model-9", USAGE) is None
    warnings = [r for r in caplog.records if "mystery-model-9" in r.getMessage()]
    assert len(warnings) == 1
    assert table.cost(None, USAGE) is None


@pytest.mark.usefixtures("fresh_warnings")
def test_a_request_to_an_unpriced_model_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """Through the transport: the request path looks the model up before the cost does."""
    import httpx

    import cachewatch

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "id": "msg_1",
                "type": "message",
                "model": "mystery-model-7",
                "content": [],
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        )

    transport = cachewatch.CacheWatchTransport(
        httpx.MockTransport(handler), breakpoints="off", registry=CollectorRegistry()
    )
    with (
        caplog.at_level(logging.WARNING, logger="cachewatch"),
        httpx.Client(transport=transport, base_url="https://api.anthropic.com") as client,
    ):
        for _ in range(3):
            client.post("/v1/messages", json={"model": "mystery-model-7", "messages": []})
    warnings = [r for r in caplog.records if "mystery-model-7" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.usefixtures("fresh_warnings")
def test_the_price_warning_truncates_a_long_model_name(caplog: pytest.LogCaptureFixture) -> None:
    model = "unpriced-" + "x" * 5_000
    with caplog.at_level(logging.WARNING, logger="cachewatch"):
        PriceTable().cost(model, USAGE)
    (warning,) = [r.getMessage() for r in caplog.records if "unpriced-" in r.getMessage()]
    assert len(warning) < 200
    assert "…" in warning


def test_file_overrides_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "prices.toml"
    toml.write_text(
        '[models."claude-sonnet-4"]\ninput = 2.0\noutput = 10.0\nread = 0.2\n'
        '[models."my-model"]\ninput = 1.0\noutput = 1.0\nwrite_5m = 1.5\ncurrency = "EUR"\n'
    )
    table = PriceTable.from_file(toml)
    sonnet = table.lookup("claude-sonnet-4-6")
    assert sonnet == Price(2.0, 10.0, read=0.2)
    mine = table.cost("my-model-x", TokenUsage(input=1_000_000, cache_write_5m=1_000_000))
    assert mine is not None
    assert mine.currency == "EUR"
    assert mine.total == pytest.approx(2.5)
    assert table.lookup("qwen-plus") == DEFAULT_PRICES["qwen-plus"]  # defaults still merged

    js = tmp_path / "prices.json"
    js.write_text(json.dumps({"models": {"qwen-plus": {"input": 0.8, "output": 2.0}}}))
    only = PriceTable.from_file(js, include_defaults=False)
    assert only.lookup("qwen-plus") == Price(0.8, 2.0)
    assert only.lookup("claude-sonnet-4-6") is None


def test_demo_savings_match_a_hand_computation() -> None:
    """Run the demo and recompute its money from the exported token totals, by hand."""
    from cachewatch.cli._demo import run_demo

    registry = CollectorRegistry()
    result = run_demo(registry=registry)
    # Hand prices per million (research A.6 and the Model Studio list): input price and the
    # read / write multipliers. Savings = input * 0.9 * cache_read (0.8 for implicit hits);
    # premium = input * 0.25 * w5m + input * w1h.
    hand_input = {"claude-sonnet-4-6": 3.0, "qwen3.6-plus": 0.4, "qwen-plus": 0.4}
    tokens: dict[tuple[str, str, str], float] = {}
    exported: dict[tuple[str, str, str], float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "cachewatch_tokens_total":
                key = (s.labels["model"], s.labels["workspace"], s.labels["type"])
                tokens[key] = tokens.get(key, 0.0) + s.value
            elif s.name in ("cachewatch_cache_savings_total", "cachewatch_cache_write_premium_total"):
                key = (s.name, s.labels["model"], s.labels["workspace"])
                exported[key] = exported.get(key, 0.0) + s.value
    for phase in ("off", "auto"):
        workspace = f"caching-{phase}"
        savings = premium = 0.0
        for model, price in hand_input.items():
            read = tokens.get((model, workspace, "cache_read"), 0.0)
            w5m = tokens.get((model, workspace, "cache_write_5m"), 0.0)
            w1h = tokens.get((model, workspace, "cache_write_1h"), 0.0)
            # Unmarked DashScope chat requests use the implicit cache: hits at 20 %, no writes.
            implicit = phase == "off" and model == "qwen-plus"
            s = price * (0.8 if implicit else 0.9) * read / 1e6
            p = price * (0.25 * w5m + 1.0 * w1h) / 1e6
            assert exported.get(("cachewatch_cache_savings_total", model, workspace), 0.0) == pytest.approx(s)
            assert exported.get(
                ("cachewatch_cache_write_premium_total", model, workspace), 0.0
            ) == pytest.approx(p)
            savings += s
            premium += p
        totals = result.phases[phase]
        assert totals.savings == pytest.approx(savings)
        assert totals.write_premium == pytest.approx(premium)
        print(
            f"demo {phase}: savings {savings:.6f} USD, write premium {premium:.6f} USD, net {savings - premium:.6f}"
        )
    # Without breakpoints only DashScope's implicit cache (always on) saves anything.
    assert [w for (phase, w), t in result.workloads.items() if phase == "off" and t.savings] == [
        "DashScope chat"
    ]
    assert result.phases["auto"].savings > result.phases["auto"].write_premium > 0


@pytest.mark.usefixtures("fresh_warnings")
def test_unknown_model_warns_once_through_the_transport(caplog: pytest.LogCaptureFixture) -> None:
    """The engine asks ``prices_implicit_apart`` before pricing: the warning must still come, once."""
    import httpx

    import cachewatch

    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "mystery-model-7",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 100, "output_tokens": 5},
    }
    request = {"model": "mystery-model-7", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="cachewatch"):
        for _ in range(2):  # two wrap() calls, two requests each
            inner = httpx.MockTransport(lambda _: httpx.Response(200, json=body))
            transport = cachewatch.CacheWatchTransport(inner, registry=registry, breakpoints="off")
            with httpx.Client(transport=transport) as client:
                for _ in range(2):
                    client.post("https://api.anthropic.com/v1/messages", json=request).raise_for_status()
    warnings = [r for r in caplog.records if "mystery-model-7" in r.getMessage()]
    assert len(warnings) == 1
    assert not [s for m in registry.collect() for s in m.samples if s.name.startswith("cachewatch_cost")]


@pytest.mark.usefixtures("fresh_warnings")
def test_unknown_model_warns_after_the_implicit_price_probe(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()
    with caplog.at_level(logging.WARNING, logger="cachewatch"):
        assert table.prices_implicit_apart("mystery-model-8") is False
        assert table.cost("mystery-model-8", USAGE) is None
        assert table.cost("mystery-model-8", USAGE) is None
    assert len([r for r in caplog.records if "mystery-model-8" in r.getMessage()]) == 1


def test_a_prefix_matches_whatever_its_case(tmp_path: Path) -> None:
    """Model ids match case-insensitively, so a user prefix spelled as the provider spells it matches."""
    toml = tmp_path / "prices.toml"
    toml.write_text(
        '[models."MyCorp-Model"]\ninput = 1.0\noutput = 2.0\n[models."QWEN-PLUS"]\ninput = 9.0\noutput = 9.0\n'
    )
    table = PriceTable.from_file(toml)
    assert table.lookup("MyCorp-Model") == Price(1.0, 2.0)
    assert table.lookup("mycorp-model-v2") == Price(1.0, 2.0)
    assert table.lookup("qwen-plus") == Price(9.0, 9.0)  # the user's entry overrides the default
    assert PriceTable({"Qwen/Qwen3-Coder": Price(1.0, 2.0)}).lookup("Qwen/Qwen3-Coder-480B") == Price(
        1.0, 2.0
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("input = nan\noutput = 1.0", "finite"),
        ("input = inf\noutput = 1.0", "finite"),
        ("input = -1.0\noutput = 1.0", ">= 0"),
        ('input = "three"\noutput = 1.0', "number"),
        ("input = true\noutput = 1.0", "number"),
        ("input = 1.0\noutput = 1.0\ncache_read = 0.5", "unknown field"),
        ("input = 1.0", "missing output"),
        ('input = 1.0\noutput = 1.0\ncurrency = ""', "currency"),
    ],
)
def test_a_bad_price_is_refused_when_the_file_loads(tmp_path: Path, entry: str, message: str) -> None:
    toml = tmp_path / "prices.toml"
    toml.write_text(f'[models."m"]\n{entry}\n')
    with pytest.raises(ValueError, match=message):
        PriceTable.from_file(toml)


def test_a_price_written_as_a_number_string_is_a_number(tmp_path: Path) -> None:
    """YAML 1.1 reads ``3e-6`` as a string: it is still a price (it was a TypeError per request)."""
    js = tmp_path / "prices.json"
    js.write_text(json.dumps({"models": {"m": {"input": "3e-6", "output": "1.5", "read": 0.2}}}))
    table = PriceTable.from_file(js)
    assert table.lookup("m") == Price(3e-6, 1.5, read=0.2)
    cost = table.cost("m", TokenUsage(input=1_000_000, output=1_000_000))
    assert cost is not None
    assert cost.total == pytest.approx(1.5 + 3e-6)


def test_a_prompt_that_names_cache_control_is_not_priced_as_marked() -> None:
    # DashScope prices an unmarked request's hits as implicit (20 %) and a marked one's as
    # explicit (10 %): a prompt that merely talks about cache_control is not marked.
    from cachewatch.engine._engine import _carries_markers

    def body(content: object) -> bytes:
        return json.dumps({"model": "qwen-plus", "messages": [{"role": "user", "content": content}]}).encode()

    assert not _carries_markers(None, body('Why does "cache_control": {"type": "ephemeral"} not hit?'))
    assert not _carries_markers(None, body("add cache_control to the last block"))
    assert not _carries_markers(None, body('a backslash then a key: \\"cache_control\\": 1'))
    marked = [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]
    assert _carries_markers(None, body(marked))
    assert _carries_markers(None, b'{"messages":[{"content":[{"cache_control" :{"type":"ephemeral"}}]}]}')
