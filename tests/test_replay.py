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
from cachewatch.simulation._shape import (
    FORMAT,
    Block,
    ExchangeShape,
    Message,
    ShapeError,
    ShapeRecorder,
    read_shapes,
)

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


# -- long recordings and corrupt files ----------------------------------------------------


def _shape(t: float, blocks: list[Block], roles: list[str]) -> ExchangeShape:
    """One recorded Anthropic exchange at ``t``, billed (uncached) what its blocks add up to."""
    total = sum(b.tokens for b in blocks)
    return ExchangeShape(
        api="messages", profile="anthropic", provider="anthropic", model="claude-sonnet-4-6",
        workspace="default", scope="s", begin=t, started=t + 0.1, ended=t + 0.2, order=(0, 0, 0),
        writer=1, status=200, stream=False, usage=TokenUsage(input=total, output=5), top_level=None,
        context=None, tools=None, messages=tuple(Message(r) for r in roles), blocks=tuple(blocks),
    )  # fmt: skip


def _conversation(t: float, chat: int, turns: int, system_tokens: list[int]) -> list[ExchangeShape]:
    """A chat under one system prompt; each turn's recorded shares move a little, as billed."""
    out = []
    for turn in range(turns):
        blocks = [Block("system", 0, "text", "5e" * 8, system_tokens[turn % len(system_tokens)], True, True)]
        blocks += [
            Block("messages", k, "text", f"{chat:08x}{k:08x}", 40 + turn % 3, True, True)
            for k in range(turn + 1)
        ]
        out.append(_shape(t + 5 * turn, blocks, ["user"] * (turn + 1)))
    return out


def test_equal_blocks_stay_equal_after_many_distinct_blocks() -> None:
    """A day of traffic holds far more distinct blocks than any cache of texts: a block seen
    late must still be rebuilt the same way every time, whatever its recorded share."""
    chat = _conversation(10_000.0, 1, 4, [5_000, 5_003, 4_998, 5_001])
    alone = replay(chat, strategies=["system"]).strategies["system"].cache_read
    assert alone > 3 * 4_900
    filler = [
        _shape(float(e), [Block("messages", i, "text", f"{e:06x}{i:010x}", 2, True, True) for i in range(1_000)],
                ["user"] * 1_000)
        for e in range(70)
    ]  # fmt: skip
    assert replay([*filler, *chat], strategies=["system"]).strategies["system"].cache_read == alone


def test_replay_memory_follows_the_exchanges_in_flight_not_the_recording() -> None:
    import tracemalloc

    def peak(chats: int) -> int:
        shapes = [x for c in range(chats) for x in _conversation(20.0 * c, c, 4, [20_000])]
        tracemalloc.start()
        try:
            replay(shapes, strategies=["system"])
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # Each request rebuilds a 20,000-token system prompt: kept for the whole recording,
    # 800 requests' bodies would take hundreds of megabytes.
    assert peak(200) < 20_000_000


def test_corrupt_lines_are_refused_with_their_line_not_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    recorder = ShapeRecorder(out, clock=ManualClock(start=5.0))
    body = {"model": "claude-sonnet-4-6", "max_tokens": 8, "system": "policy " * 1_500,
            "messages": [{"role": "user", "content": "Where is my refund?"}]}  # fmt: skip
    pending = recorder.begin(body=orjson.dumps(body), scope="k", **ANTHROPIC)
    recorder.started(pending)
    recorder.finish(pending, TokenUsage(input=2_000, output=3), 200)
    header, recorded = out.getvalue().splitlines()
    header += "\n"
    line = json.loads(recorded)
    assert len(list(read_shapes(io.StringIO(header + recorded)))) == 1

    def corrupt(**change: Any) -> str:
        data = {**line, **change}
        return header + json.dumps(data) + "\n"

    huge = [list(b) for b in line["blocks"]]
    huge[-1][4] = 10**12  # would be rebuilt as a text of 10**12 tokens
    not_hex = [list(b) for b in line["blocks"]]
    not_hex[0][3] = "zz-not-a-digest"
    cases = {
        "huge.jsonl": (corrupt(blocks=huge).encode(), "line 2"),
        "digest.jsonl": (corrupt(blocks=not_hex).encode(), "line 2"),
        "binary.jsonl": (header.encode() + b"\xff\xfe garbage\n", "line 2"),
        "empty.jsonl": (b"", "empty"),
        "other.jsonl": (b'{"level": "info", "event": "request"}\n', "line 1"),
    }
    for name, (content, where) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ShapeError, match=where):
            list(read_shapes(path))
        assert main(["replay", str(path)]) == 2
        err = capsys.readouterr().err
        assert where in err, (name, err)
        assert err.count("\n") == 1, (name, err)  # one line, no traceback


def test_digests_are_shared_by_a_sessions_recorders_and_guesses_cannot_be_checked() -> None:
    """Two recorders of one process (two wrapped clients, one file) give a key and a block the
    same digests; a different salt gives others; and a guess of a short block's text (a
    yes, a PIN) cannot be confirmed by digesting it."""
    import xxhash

    from cachewatch.planning._canonical import block_digest as block_bytes

    answer = "PIN 4071"
    body = {"model": "claude-sonnet-4-6", "max_tokens": 8, "system": "policy " * 1_500,
            "messages": [{"role": "user", "content": answer, "name": "Ada"}]}  # fmt: skip

    def record(**options: Any) -> dict[str, Any]:
        out = io.StringIO()
        recorder = ShapeRecorder(out, clock=ManualClock(start=5.0), **options)
        pending = recorder.begin(body=orjson.dumps(body), scope=KEY, **ANTHROPIC)
        recorder.started(pending)
        recorder.finish(pending, TokenUsage(input=2_000, output=3), 200)
        line: dict[str, Any] = json.loads(out.getvalue().splitlines()[1])
        return line

    first, second, other = record(), record(), record(salt=b"another session!")
    assert first["scope"] == second["scope"]
    assert first["blocks"] == second["blocks"]
    assert first["scope"] != other["scope"]
    assert [b[3] for b in first["blocks"]] != [b[3] for b in other["blocks"]]
    text = json.dumps(first)
    assert xxhash.xxh3_64_hexdigest(block_bytes(answer)) not in text  # was the block's digest
    assert xxhash.xxh3_64_hexdigest(KEY.encode()) not in text
