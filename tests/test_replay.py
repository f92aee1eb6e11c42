"""Traffic shapes (``_shape``) and ``cachewatch replay`` (``_replay``).

Traffic is sent unmarked through the emulator's cache model in process (``_cache_sim``)
while a :class:`ShapeRecorder` records its shape; replaying the shape must give, for every
strategy, what that strategy really cost on the same traffic (each strategy run for real
through the cache model). The file holds no prompt text and no key.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

import test_regret
from _cache_sim import FIXED, Run
from cachewatch.accounting._records import TokenUsage
from cachewatch.cli import main
from cachewatch.emulator import ManualClock
from cachewatch.simulation._replay import STRATEGIES, replay
from cachewatch.simulation._shape import FORMAT, ShapeError, ShapeRecorder, read_shapes

ANTHROPIC = {"api": "messages", "host": "api.anthropic.com", "path": "/v1/messages"}
SECRET = "Quetzal-4471-internal"
KEY = "sk-ant-replay-secret-key-123456"


def _record(traffic: list[tuple[float, dict[str, Any]]]) -> tuple[str, dict[str, float]]:
    """Record ``traffic`` sent unmarked; also run every strategy on it for real."""
    runs = {s: Run.start(s) for s in (*FIXED, "auto")}
    out = io.StringIO()
    recorder = ShapeRecorder(out, clock=runs["none"].clock)
    for gap, body in traffic:
        for strategy, run in runs.items():
            run.wait(gap)
            if strategy != "none":
                run.send(body)
                continue
            pending = recorder.begin(body=orjson.dumps(body), scope="k", provider="anthropic", **ANTHROPIC)
            usage = run.send(body)
            recorder.started(pending)
            recorder.finish(pending, usage, 200)
    return out.getvalue(), {s: r.cost for s, r in runs.items()}


@pytest.mark.parametrize("seed", [1, 5, 9])
def test_replay_gives_what_each_strategy_really_costs(seed: int) -> None:
    rng = random.Random(seed)
    regimes = [
        (rng.choice(test_regret.SHAPES), rng.randint(1_200, 3_500), rng.randint(5, 20)) for _ in range(3)
    ]
    traffic, _ = test_regret._build(seed, regimes)
    text, real = _record(traffic)
    result = replay(read_shapes(io.StringIO(text)))
    assert set(result.strategies) == set(STRATEGIES)
    assert result.misaligned == 0
    assert result.strategies["off"].units == result.recorded.units == real["none"]
    for strategy in (*FIXED, "auto"):
        replayed = result.strategies[strategy].units
        assert abs(replayed - real[strategy]) <= 0.05 * real[strategy], (strategy, replayed, real[strategy])
    assert all(t.requests == len(traffic) for t in result.strategies.values())


def test_concurrent_requests_replay_in_the_order_they_happened() -> None:
    clock = ManualClock(start=1_000.0)
    out = io.StringIO()
    recorder = ShapeRecorder(out, clock=clock)
    system = "Extract the fields. " + " ".join(["invoice", "amount", "date", "vendor"] * 700)

    def begin(i: int) -> Any:
        body = {"model": "claude-sonnet-4-6", "max_tokens": 8, "system": system,
                "messages": [{"role": "user", "content": f"Invoice {i}"}]}  # fmt: skip
        return recorder.begin(body=orjson.dumps(body), scope="k", **ANTHROPIC)

    wave = [begin(i) for i in range(3)]  # all in flight before any response starts
    for pending in wave:
        recorder.started(pending)
    for pending in wave:
        recorder.finish(pending, TokenUsage(input=3_000, output=4), 200)
    clock.advance(20)
    late = begin(3)
    recorder.started(late)
    recorder.finish(late, TokenUsage(input=3_000, output=4), 200)

    result = replay(read_shapes(io.StringIO(out.getvalue())), strategies=["system"])
    system_only = result.strategies["system"]
    assert system_only.cache_write_5m > 3 * 2_500  # the wave: three cold writes
    assert 2_500 < system_only.cache_read < 3_000  # the late one reads the system prompt


def test_chat_completions_and_tool_loops_lay_out_as_recorded() -> None:
    clock = ManualClock(start=1_000.0)
    out = io.StringIO()
    recorder = ShapeRecorder(out, clock=clock)
    system = "Travel assistant. " + " ".join(["route", "fare", "hotel", "visa"] * 600)
    tools = [{"type": "function", "function": {"name": "search", "description": "Search fares"}}]
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    where = {"api": "chat_completions", "host": "dashscope-intl.aliyuncs.com",
             "path": "/compatible-mode/v1/chat/completions"}  # fmt: skip
    for turn in range(5):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"Turn {turn}, to Lima?"}]})
        body = {"model": "qwen-plus", "messages": messages, "tools": tools}
        pending = recorder.begin(body=orjson.dumps(body), scope="k", provider="dashscope", **where)
        recorder.started(pending)
        recorder.finish(pending, TokenUsage(input=2_500 + 40 * turn, output=10), 200)
        call = {"id": f"call_{turn}", "type": "function", "function": {"name": "search", "arguments": "{}"}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"call_{turn}", "content": f"Fare {turn}: 120"})
        clock.advance(15)
    shapes = list(read_shapes(io.StringIO(out.getvalue())))
    assert shapes[-1].profile == "dashscope_openai"
    assert shapes[-1].tools is not None
    assert [m.role for m in shapes[-1].messages][:3] == ["system", "user", "assistant"]
    result = replay(shapes)
    assert result.misaligned == 0
    assert result.as_recorded == 0
    assert result.strategies["auto"].cache_read > 0
    assert result.strategies["auto"].units < result.strategies["none"].units


def test_the_recording_holds_no_text_and_no_key(tmp_path: Path) -> None:
    path = tmp_path / "shape.jsonl"
    recorder = ShapeRecorder(path, clock=ManualClock(start=5.0))
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8,
        "system": f"You serve {SECRET}. " + "policy " * 1_500,
        "tools": [{"name": f"tool_{SECRET}", "description": SECRET, "input_schema": {}}],
        "messages": [
            {"role": "user", "content": f"{SECRET}?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {"q": SECRET}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": SECRET}]},
        ],
    }
    pending = recorder.begin(body=orjson.dumps(body), scope=KEY, **ANTHROPIC)
    recorder.started(pending)
    recorder.finish(pending, TokenUsage(input=2_000, output=3), 200)
    recorder.close()
    text = path.read_text()
    assert SECRET not in text
    assert SECRET.lower() not in text.lower()
    assert KEY not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0] == {"format": FORMAT, "version": 1}
    assert len(lines[1]["blocks"]) == 5  # a tool, the system, three messages
    assert lines[1]["scope"]  # a salted digest: equal keys give equal scopes in one file


def test_cli_replay_prints_every_strategy_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traffic, _ = test_regret._build(3, [("chat", 2_000, 6), ("one_shot_shared", 2_000, 6)])
    text, _ = _record(traffic)
    path = tmp_path / "shape.jsonl"
    path.write_text(text)
    assert main(["replay", str(path)]) == 0
    table = capsys.readouterr().out
    for strategy in ("recorded", *STRATEGIES):
        assert f"\n{strategy} " in table, strategy
    assert "best fixed strategy:" in table
    assert main(["replay", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["strategy"] for row in data["rows"]] == ["recorded", *STRATEGIES]
    assert data["auto_vs_best_fixed"] is not None


def test_a_malformed_file_is_refused_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"format": FORMAT, "version": 1}) + "\n{not json\n")
    with pytest.raises(ShapeError, match="line 2"):
        list(read_shapes(path))
    assert main(["replay", str(path)]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 2
    wrong = tmp_path / "other.jsonl"
    wrong.write_text(json.dumps({"format": "something-else", "version": 1}) + "\n")
    with pytest.raises(ShapeError, match="not a cachewatch-traffic-shape"):
        list(read_shapes(wrong))
