"""Token estimation: families, laziness, calibration, the optional Qwen tokenizer, corpus error."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

from cachewatch.planning import _qwen, _tokens
from cachewatch.planning._costs import model_family
from cachewatch.planning._tokens import TokenEstimator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("claude-sonnet-4-5", "claude"),
        ("anthropic/claude-3-5-haiku", "claude"),
        ("us.anthropic.claude-haiku-4-5-v1:0", "claude"),
        ("qwen3-max", "qwen"),
        ("gpt-4o-mini", "gpt"),
        ("o3-mini", "gpt"),
        ("deepseek-chat", "deepseek"),
        ("mystery", "other"),
        (None, "other"),
    ],
)
def test_model_family(model: str | None, family: str) -> None:
    assert model_family(model) == family


def test_text_costs_are_plausible() -> None:
    est = TokenEstimator(use_qwen_tokenizer=False)
    english = "The quick brown fox jumps over the lazy dog. " * 100
    assert 700 < est.text(english, family="claude") < 1_400
    chinese = "缓存命中率是衡量提示缓存效果的关键指标。" * 50
    assert est.text(chinese, family="qwen") > len(chinese) / 2


def test_prefix_counter_thresholds() -> None:
    est = TokenEstimator(use_qwen_tokenizer=False)
    counter = est.prefix(model="claude-sonnet-4-5", provider="anthropic")
    counter.add_block({"type": "text", "text": "word " * 100})
    assert not counter.reaches(1024)
    counter.add_block({"type": "text", "text": "word " * 2_000})
    assert counter.reaches(1024)
    counter.add_block({"type": "thinking", "thinking": "x" * 100_000})  # thinking is not counted
    assert counter.estimate < 5_000


def test_precise_count_only_inside_the_band() -> None:
    calls: list[int] = []

    def fake(text: str) -> int:
        calls.append(len(text))
        return len(text) // 10  # a "tokenizer" far cheaper than the estimate

    est = TokenEstimator(tokenizers={"qwen": fake}, band=0.2)
    # Bills that agree with the tokenizer: it decides inside the band.
    est.observe_precise(2_000, 2_000, provider="dashscope", family="qwen")
    counter = est.prefix(model="qwen3-max", provider="dashscope")
    raw = counter.add_block({"type": "text", "text": "abcd " * 1_000})  # ~1,250 cheap tokens
    assert not counter.reaches_at(raw, 1_100)  # inside the band: the tokenizer decides (500 tokens)
    assert calls == [5_000]
    assert counter.reaches_at(raw, 100)  # far below: settled without counting again
    assert calls == [5_000]


def test_the_tokenizer_is_calibrated_against_what_the_provider_bills() -> None:
    # A provider (or relay, or emulator) that bills 1.6x what the local tokenizer counts:
    # the precise count alone says a 1,250-cheap-token prefix is ~835 tokens, under 1,100.
    est = TokenEstimator(tokenizers={"qwen": lambda text: len(text) // 6}, band=0.2)
    text = "abcd " * 1_000

    def counter_at(threshold: float) -> tuple[bool, float | None]:
        counter = est.prefix(model="qwen3-max", provider="dashscope")
        raw = counter.add_block({"type": "text", "text": text})
        return counter.reaches_at(raw, threshold), counter.precise_sample()

    # Before any bill the tokenizer does not veto what the estimate reaches: a marker
    # under the minimum costs no write, a missed one costs the next request a read.
    reached, sample = counter_at(1_100)
    assert reached
    assert sample is not None
    est.observe_precise(sample, int(1.6 * sample), provider="dashscope", family="qwen")
    assert est.tokenizer_ratio("dashscope", "qwen") == pytest.approx(1.6, rel=1e-2)
    assert est.tokenizer_ratio("other", "qwen") is None  # per provider
    reached, _ = counter_at(1_100)
    assert reached  # ~835 x 1.6: over 1,100 once the tokenizer's count is calibrated
    # Bills that agree with the tokenizer: ~835, under 1,100.
    agreeing = TokenEstimator(tokenizers={"qwen": lambda text: len(text) // 6}, band=0.2)
    agreeing.observe_precise(sample, int(sample), provider="dashscope", family="qwen")
    counter = agreeing.prefix(model="qwen3-max", provider="dashscope")
    assert not counter.reaches_at(counter.add_block({"type": "text", "text": text}), 1_100)
    # Samples: the first PRECISE_SAMPLES requests that needed the tokenizer, then 1 in PRECISE_EVERY.
    picks = [
        est.wants_precise_sample("p", "qwen")
        for _ in range(_tokens.PRECISE_SAMPLES + 3 * _tokens.PRECISE_EVERY)
    ]
    assert sum(picks) == _tokens.PRECISE_SAMPLES + 3
    assert all(picks[: _tokens.PRECISE_SAMPLES])
    # A request that never asked the tokenizer, or a huge prompt, is never counted whole.
    counter = est.prefix(model="qwen3-max", provider="dashscope")
    counter.add_block({"type": "text", "text": text})
    assert counter.precise_sample() is None
    counter = est.prefix(model="qwen3-max", provider="dashscope")
    raw = counter.add_block({"type": "text", "text": "abcd " * 40_000})
    counter.reaches_at(raw, raw * 1.05)
    assert counter.precise_sample() is None


def test_calibration_is_bounded_ewma() -> None:
    est = TokenEstimator(alpha=0.5, min_ratio=0.5, max_ratio=2.0)
    est.observe(1_000, 1_500, provider="anthropic", family="claude")
    assert est.ratio("anthropic", "claude") == pytest.approx(1.5)
    est.observe(1_000, 1_000, provider="anthropic", family="claude")
    assert est.ratio("anthropic", "claude") == pytest.approx(1.25)
    for _ in range(20):
        est.observe(1_000, 1_990, provider="anthropic", family="claude")
    assert est.ratio("anthropic", "claude") == pytest.approx(1.99, rel=1e-3)
    est.observe(1_000, 100_000, provider="anthropic", family="claude")  # hidden content: ignored
    assert est.ratio("anthropic", "claude") == pytest.approx(1.99, rel=1e-3)
    est.observe(10, 20, provider="x", family="claude")  # tiny prompts are ignored
    assert est.ratio("x", "claude") == 1.0


def test_qwen_tokenizer_absent_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the dashscope package's table (tiktoken installed or not) there is no Qwen
    # tokenizer, and the estimator falls back to its heuristic for Qwen text: it still counts.
    monkeypatch.setattr(_qwen, "_qwen_cache", [])
    monkeypatch.setattr(_qwen, "_find_qwen_table", lambda: None)
    assert _qwen.load_qwen_tokenizer() is None
    est = TokenEstimator()
    assert est.tokenizer("qwen") is None  # through the real loader, not a patched one
    counter = est.prefix(model="qwen-plus", provider="dashscope")
    counter.add_block("通义千问 Qwen counts every language. " * 20)
    assert counter.raw > 100


@pytest.mark.skipif(
    _qwen.importlib.util.find_spec("tiktoken") is None or _qwen._find_qwen_table() is None,
    reason="optional extra: tiktoken + dashscope not installed",
)
def test_real_qwen_tokenizer() -> None:  # pragma: no cover - depends on optional packages
    count = _qwen.load_qwen_tokenizer()
    assert count is not None
    assert 5 < count("Hello, world! This is a test of the Qwen tokenizer.") < 20


def test_estimator_median_error_on_the_corpus() -> None:
    from estimator_error import measure

    from corpus import load_corpus  # fails (not skips) when the corpus is missing

    load_corpus()
    errors = measure()
    every = [e for errs in errors.values() for e in errs]
    assert len(every) > 1_000
    assert statistics.median(every) < 0.35
    by_api = {api: [e for (a, _), errs in errors.items() if a == api for e in errs] for api, _ in errors}
    for api, errs in by_api.items():
        assert statistics.median(errs) < 0.45, api


def test_the_estimate_s_error_is_measured_against_the_bills() -> None:
    est = TokenEstimator(alpha=0.5)
    assert est.error("dashscope", "qwen", precise=False) == _tokens.DEFAULT_ERROR
    for _ in range(6):  # bills the calibrated estimate predicts exactly
        est.observe(1_000, 1_300, provider="dashscope", family="qwen")
    assert est.error("dashscope", "qwen", precise=False) == _tokens.MIN_ERROR
    noisy = TokenEstimator(alpha=0.5)
    for actual in (1_300, 1_430, 1_170, 1_430, 1_170, 1_430):  # ±10 % around the ratio
        noisy.observe(1_000, actual, provider="dashscope", family="qwen")
    assert 0.15 < noisy.error("dashscope", "qwen", precise=False) <= noisy.band
    # Per count: the tokenizer's own misses are measured apart.
    assert noisy.error("dashscope", "qwen", precise=True) == _tokens.DEFAULT_ERROR
    counter = noisy.prefix(model="qwen3-max", provider="dashscope")
    assert counter.error() == noisy.error("dashscope", "qwen", precise=False)
