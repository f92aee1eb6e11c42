"""Real clients against the emulator, in the request and response shapes they send today (issue 16).

Each test drives a real client package (LiteLLM, the dashscope SDK, the openai SDK)
through ``cachewatch.wrap`` or ``cachewatch proxy`` against the emulator served by
uvicorn, and checks what cachewatch recorded.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from prometheus_client import generate_latest

# LiteLLM fetches its model price map from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dashscope
import httpx
import litellm
import openai
from litellm.llms.custom_httpx.http_handler import HTTPHandler

import cachewatch
from _helpers import Telemetry, make_telemetry
from cachewatch.cli import _main as cli
from cachewatch.cli._report import report, summarise
from cachewatch.emulator import Emulator, ManualClock, create_app, run_in_thread
from cachewatch.emulator._dashscope import parse as parse_native
from cachewatch.emulator._openai import parse as parse_chat
from cachewatch.proxy import _config as _proxy
from cachewatch.proxy import create_proxy_app

#: LiteLLM's own pydantic models and imports warn; the suite turns warnings into errors.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:pydantic.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

CC: dict[str, Any] = {"type": "ephemeral"}
#: 1,200 tokens by the emulator's count: above the 1,024-token minimum of the models used.
SYSTEM = " ".join(["ab"] * 1_200)


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    return create_app(clock=ManualClock())


@pytest.fixture(scope="module")
def base_url(emulator: Emulator) -> Iterator[str]:
    with run_in_thread(emulator) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_cache(emulator: Emulator) -> None:
    emulator.reset()


@pytest.fixture
def telemetry() -> Telemetry:
    return make_telemetry()


# -- LiteLLM's sync Anthropic stream ends at message_delta ----------------------------------


def test_litellm_sync_stream_is_ok_although_message_stop_is_never_read(
    base_url: str, telemetry: Telemetry
) -> None:
    """LiteLLM stops at the final ``message_delta`` and closes the body: the stream is complete."""
    handler = HTTPHandler()
    cachewatch.wrap(handler.client, breakpoints="off", **telemetry.kwargs)
    stream = litellm.completion(
        model="anthropic/claude-sonnet-4-6",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi there"}],
        stream=True,
        api_base=base_url,
        api_key="test",
        client=handler,
        max_tokens=32,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    handler.close()
    assert text
    assert telemetry.requests(api="messages", outcome="ok") == 1
    assert telemetry.requests(outcome="aborted") == 0
    tokens = telemetry.tokens(api="messages")
    assert tokens["input"] == 1_200 + 3  # the system prompt, then "hi" (1) and "there" (2)
    assert tokens["output"] > 0
    (span,) = telemetry.spans()
    assert span.attributes["cachewatch.outcome"] == "ok"
    assert span.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)


# -- DashScope content forms: a string and a one-text-part list are the same prompt ----------

TEXT = "What does the cache hold?"
FORMS: list[Any] = [
    TEXT,
    [{"type": "text", "text": TEXT}],
    [{"type": "text", "text": TEXT, "cache_control": CC}],
    [{"text": TEXT}],  # DashScope native's typeless part
    [{"text": TEXT, "cache_control": CC}],
]


@pytest.mark.parametrize("form", FORMS[1:], ids=["typed", "typed-marked", "native", "native-marked"])
def test_every_form_of_one_text_renders_the_same_prefix(form: Any) -> None:
    """Alibaba's context-cache doc hits a list+marker message with the same plain string."""

    def chat(content: Any) -> bytes:
        body = {"model": "qwen-plus", "messages": [{"role": "user", "content": content}]}
        return parse_chat(body).prompt.hashes[-1]

    def native(content: Any) -> bytes:
        body = {"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": content}]}}
        return parse_native(body, multimodal=False, stream=False).prompt.hashes[-1]

    assert chat(form) == chat(TEXT)
    assert native(form) == native(TEXT)


def _conversation(send: Any, turns: int = 4) -> list[tuple[int, int, int]]:
    """Grow a conversation of plain-string messages; (prompt, cached, written) per turn."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    seen: list[tuple[int, int, int]] = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: " + "tell me more " * 100})
        reply, usage = send(messages)
        details = usage["prompt_tokens_details"]
        seen.append((usage["input_tokens"], details["cached_tokens"], details["cache_creation_input_tokens"]))
        messages.append({"role": "assistant", "content": reply})
    return seen


def _assert_history_read(seen: list[tuple[int, int, int]]) -> None:
    # Every follow-up reads the whole previous prompt (the tail cachewatch marked as a list
    # part, now sent back as a plain string) and writes only the new turn.
    for (previous, _, _), (_, cached, written) in itertools.pairwise(seen):
        assert cached >= previous
        assert written < previous


def test_dashscope_v2_client_native_conversation_reads_its_history(
    base_url: str, telemetry: Telemetry
) -> None:
    http = cachewatch.wrap(httpx.Client(timeout=30), **telemetry.kwargs)
    client = dashscope.Client(api_key="test", base_url=f"{base_url}/api/v1", http_client=http, max_retries=0)

    def send(messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        reply = client.chat.completions.create(model="qwen-plus", messages=messages)
        usage = reply.usage
        return reply.choices[0].message.content, {
            "input_tokens": usage.input_tokens,
            "prompt_tokens_details": usage.prompt_tokens_details,
        }

    seen = _conversation(send)
    http.close()
    _assert_history_read(seen)
    assert telemetry.value("cachewatch_breakpoints_total", action="inserted") >= 4
    # cachewatch's own diagnosis agrees: no turn read less than its prefix allowed.
    assert [s.attributes.get("cachewatch.miss_reason") for s in telemetry.spans()] == [None] * 4


def test_dashscope_generation_call_through_the_proxy_reads_its_history(
    base_url: str, telemetry: Telemetry
) -> None:
    app = create_proxy_app(base_url, registry=telemetry.registry, logger=telemetry.logger)
    with run_in_thread(app) as proxy_url:

        def send(messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
            reply = dashscope.Generation.call(
                model="qwen-plus",
                messages=messages,
                result_format="message",
                api_key="test",
                base_address=f"{proxy_url}/api/v1",
            )
            assert reply.status_code == 200, reply
            return reply.output.choices[0].message.content, dict(reply.usage)

        seen = _conversation(send)
    _assert_history_read(seen)
    assert [e.get("miss_reason") for e in telemetry.events()] == [None] * 4


# -- unreported usage is visible, never a silent zero ------------------------------------------

CHAT = [{"role": "user", "content": "Tell me about caching."}]


def _stream_chat(client: openai.OpenAI) -> list[Any]:
    return list(client.chat.completions.create(model="gpt-5", messages=CHAT, stream=True))


def test_a_stream_without_usage_is_counted_marked_and_reported(base_url: str, telemetry: Telemetry) -> None:
    """An OpenAI stream that did not ask for usage: ok, no tokens, and said so everywhere."""
    client = cachewatch.wrap(openai.OpenAI(api_key="test", base_url=f"{base_url}/v1"), **telemetry.kwargs)
    chunks = _stream_chat(client)
    assert all(c.usage is None for c in chunks)
    labels = {"api": "chat_completions", "model": "gpt-5"}
    assert telemetry.requests(outcome="ok", **labels) == 1
    assert telemetry.value("cachewatch_usage_unreported_total", **labels) == 1
    assert sum(telemetry.tokens(**labels).values()) == 0
    (span,) = telemetry.spans()
    assert span.attributes["cachewatch.usage_reported"] is False
    assert "gen_ai.usage.input_tokens" not in span.attributes
    (event,) = telemetry.events()
    assert event["usage_reported"] is False
    assert "tokens" not in event

    exposition = generate_latest(telemetry.registry).decode()
    assert summarise(exposition)["models"]["gpt-5"]["usage_unreported"] == 1
    out = io.StringIO()
    report(exposition, stream=out)
    text = out.getvalue()
    assert "no usage" in text
    assert "1 requests ended ok without reporting usage" in text


def test_a_stream_with_usage_is_not_counted_as_unreported(base_url: str, telemetry: Telemetry) -> None:
    client = cachewatch.wrap(
        openai.OpenAI(api_key="test", base_url=f"{base_url}/v1"), include_usage=True, **telemetry.kwargs
    )
    chunks = _stream_chat(client)
    assert all(c.usage is None for c in chunks)  # the usage chunk cachewatch asked for stays hidden
    labels = {"api": "chat_completions", "model": "gpt-5"}
    assert telemetry.requests(outcome="ok", **labels) == 1
    assert telemetry.value("cachewatch_usage_unreported_total", **labels) == 0
    assert telemetry.tokens(**labels)["input"] > 0
    (span,) = telemetry.spans()
    assert "cachewatch.usage_reported" not in span.attributes


def test_proxy_include_usage_flag_reaches_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_app(upstream: str, **options: Any) -> object:
        seen.update(options)
        return object()

    monkeypatch.setattr(_proxy, "create_proxy_app", fake_app)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr(_proxy, "log_json_lines", lambda stream=None: None)
    assert cli.main(["proxy", "--upstream", "http://127.0.0.1:9", "--include-usage"]) == 0
    assert seen["include_usage"] is True
    seen.clear()
    assert cli.main(["proxy", "--upstream", "http://127.0.0.1:9"]) == 0
    assert "include_usage" not in seen


@pytest.mark.parametrize("include_usage", [False, True])
def test_proxy_include_usage_counts_the_stream(
    base_url: str, telemetry: Telemetry, include_usage: bool
) -> None:
    options = {"include_usage": True} if include_usage else {}
    app = create_proxy_app(base_url, registry=telemetry.registry, logger=telemetry.logger, **options)
    with run_in_thread(app) as proxy_url:
        chunks = _stream_chat(openai.OpenAI(api_key="test", base_url=f"{proxy_url}/v1", max_retries=0))
    assert all(c.usage is None for c in chunks)
    unreported = telemetry.value("cachewatch_usage_unreported_total", api="chat_completions")
    assert unreported == (0 if include_usage else 1)
    assert (telemetry.tokens(api="chat_completions")["input"] > 0) is include_usage


# -- DashScope explicit vs implicit cache: one rate each ----------------------------------------

QWEN_INPUT = 0.4 / 1e6  # qwen-plus input price per token (defaults)


def _compat_client(base_url: str, telemetry: Telemetry, sink: Any, **options: Any) -> openai.OpenAI:
    client = openai.OpenAI(api_key="test", base_url=f"{base_url}/compatible-mode/v1", max_retries=0)
    return cachewatch.wrap(client, sinks=[sink], **telemetry.kwargs, **options)


class Records:
    name = "records"

    def __init__(self) -> None:
        self.records: list[Any] = []

    def start(self, info: Any) -> None:
        return None

    def finish(self, state: object | None, record: Any) -> None:
        self.records.append(record)


def test_unmarked_dashscope_requests_are_priced_at_the_implicit_rate(
    base_url: str, telemetry: Telemetry
) -> None:
    records = Records()
    client = _compat_client(base_url, telemetry, records, breakpoints="off")
    messages = [{"role": "system", "content": " ".join(["ab"] * 600)}, {"role": "user", "content": "hi"}]
    for _ in range(2):
        reply = client.chat.completions.create(model="qwen-plus", messages=messages)
    details = reply.usage.prompt_tokens_details
    assert details.cached_tokens == 601
    assert getattr(details, "cache_type", None) is None
    last = records.records[-1]
    assert last.usage.cache_read == 601
    assert last.usage.cache_write == 0
    assert last.extra["cache_mode"] == "implicit"
    # Implicit hits cost 20 % of the input price: 80 % saved, no write premium.
    assert last.cost.savings == pytest.approx(QWEN_INPUT * 0.8 * 601)
    assert last.cost.write_premium == 0


def test_marked_dashscope_requests_are_priced_at_the_explicit_rates(
    base_url: str, telemetry: Telemetry
) -> None:
    records = Records()
    client = _compat_client(base_url, telemetry, records, breakpoints="off")
    system = [{"type": "text", "text": SYSTEM, "cache_control": CC}]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]
    for _ in range(2):
        client.chat.completions.create(model="qwen-plus", messages=messages)
    first, second = records.records
    assert first.extra["cache_mode"] == second.extra["cache_mode"] == "explicit"
    assert first.cost.write_premium == pytest.approx(QWEN_INPUT * 0.25 * 1_200)  # writes at 125 %
    assert second.cost.savings == pytest.approx(QWEN_INPUT * 0.9 * 1_200)  # reads at 10 %


@pytest.mark.parametrize(
    ("cache_type", "marked", "implicit"), [("implicit", True, True), ("ephemeral", False, False)]
)
def test_a_reported_cache_type_wins_over_the_markers(cache_type: str, marked: bool, implicit: bool) -> None:
    """``prompt_tokens_details.cache_type`` names the mode; the markers are only the fallback."""
    usage = {
        "prompt_tokens": 2_000,
        "completion_tokens": 5,
        "prompt_tokens_details": {
            "cached_tokens": 1_500,
            "cache_creation_input_tokens": 0,
            "cache_type": cache_type,
        },
    }
    body = {"id": "c1", "object": "chat.completion", "model": "qwen-plus", "choices": [], "usage": usage}
    records = Records()
    transport = cachewatch.CacheWatchTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, json=body)),
        breakpoints="off",
        sinks=[records],
        **make_telemetry().kwargs,
    )
    content: Any = [{"type": "text", "text": "x", "cache_control": CC}] if marked else "x"
    request = {"model": "qwen-plus", "messages": [{"role": "user", "content": content}]}
    with httpx.Client(transport=transport) as http:
        http.post("https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions", json=request)
    (record,) = records.records
    assert record.extra["cache_mode"] == ("implicit" if implicit else "explicit")
    assert record.cost.savings == pytest.approx(QWEN_INPUT * (0.8 if implicit else 0.9) * 1_500)


# -- the Responses API end to end ----------------------------------------------------------------

LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}


def _responses_client(base_url: str, telemetry: Telemetry, **options: Any) -> openai.OpenAI:
    client = openai.OpenAI(api_key="test", base_url=f"{base_url}/v1", max_retries=0)
    return cachewatch.wrap(client, **telemetry.kwargs, **options)


def test_responses_api_json_stream_and_helper_are_accounted(base_url: str, telemetry: Telemetry) -> None:
    client = _responses_client(base_url, telemetry)
    kwargs: dict[str, Any] = {"model": "gpt-5", "instructions": SYSTEM, "input": "hello there"}
    first = client.responses.create(**kwargs)
    assert first.status == "completed"
    assert first.output_text
    assert first.usage.input_tokens == 1_204
    assert first.usage.input_tokens_details.cached_tokens == 0
    second = client.responses.create(**kwargs)
    assert second.usage.input_tokens_details.cached_tokens == 1_204  # automatic prefix caching
    assert second.output_text == first.output_text

    events = list(client.responses.create(**kwargs, stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == first.output_text
    # The stream helper needs response.created first and the added events before deltas.
    parts = [{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}]
    with client.responses.stream(model="gpt-5", instructions=SYSTEM, input=parts) as stream:
        final = stream.get_final_response()
    assert final.output_text == first.output_text
    assert final.usage.input_tokens_details.cached_tokens == 1_204  # the list form is the same prefix

    labels = {"api": "responses", "model": "gpt-5"}
    assert telemetry.requests(outcome="ok", **labels) == 4
    tokens = telemetry.tokens(**labels)
    assert tokens["cache_read"] == 3 * 1_204
    assert tokens["input"] == 1_204
    assert tokens["output"] == 4 * first.usage.output_tokens
    assert telemetry.value("cachewatch_usage_unreported_total", **labels) == 0
    spans = telemetry.spans()
    assert [s.attributes["gen_ai.response.id"] for s in spans[:2]] == [first.id, second.id]
    assert {s.attributes["gen_ai.response.finish_reasons"] for s in spans} == {("completed",)}
    assert spans[2].attributes["gen_ai.request.stream"] is True


def test_responses_api_tool_loop_reads_its_history(base_url: str, telemetry: Telemetry) -> None:
    client = _responses_client(base_url, telemetry)
    history: list[Any] = [{"role": "user", "content": "Please use the tool to look up caching."}]
    call = client.responses.create(model="gpt-5", instructions=SYSTEM, tools=[LOOKUP], input=history)
    (item,) = [o for o in call.output if o.type == "function_call"]
    assert item.name == "lookup"
    history += [
        {"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments},
        {"type": "function_call_output", "call_id": item.call_id, "output": "found it"},
    ]
    answer = client.responses.create(model="gpt-5", instructions=SYSTEM, tools=[LOOKUP], input=history)
    assert answer.output_text
    assert answer.usage.input_tokens_details.cached_tokens == call.usage.input_tokens
    assert telemetry.tokens(api="responses")["cache_read"] == call.usage.input_tokens


# -- OpenAI GPT-5.6 and later bill cache writes ----------------------------------------------------

#: A test price (per million tokens), not a list price: the facts file has none for OpenAI.
GPT56_PRICES = {"models": {"gpt-5.6": {"input": 2.0, "output": 8.0, "read": 0.1, "write_5m": 1.25}}}


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_gpt_5_6_cache_writes_are_split_out_and_priced(base_url: str, telemetry: Telemetry, api: str) -> None:
    records = Records()
    client = _responses_client(base_url, telemetry, prices=GPT56_PRICES, sinks=[records])

    def send() -> Any:
        if api == "chat":
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello there"}]
            usage = client.chat.completions.create(model="gpt-5.6", messages=messages).usage
            return usage.prompt_tokens, usage.prompt_tokens_details
        usage = client.responses.create(model="gpt-5.6", instructions=SYSTEM, input="hello there").usage
        return usage.input_tokens, usage.input_tokens_details

    total, details = send()
    assert details.cache_write_tokens == total  # the whole prompt written, at 1.25x
    again, details = send()
    assert again == total
    assert details.cached_tokens == total
    assert not details.cache_write_tokens
    first, second = records.records
    assert (first.usage.input, first.usage.cache_write_5m, first.usage.cache_read) == (0, total, 0)
    assert (second.usage.input, second.usage.cache_write_5m, second.usage.cache_read) == (0, 0, total)
    assert first.cost.write_premium == pytest.approx(2.0e-6 * 0.25 * total)
    assert second.cost.savings == pytest.approx(2.0e-6 * 0.9 * total)


def test_gpt_5_6_usage_is_partitioned_as_the_openai_guide_describes() -> None:
    """The guide's example: 2,000 read, 400 written, 200 neither, in a 2,600-token prompt."""
    from cachewatch.accounting._records import TokenUsage
    from cachewatch.observing._usage import partition_usage

    chat = {
        "prompt_tokens": 2_600,
        "completion_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 2_000, "cache_write_tokens": 400},
    }
    responses = {
        "input_tokens": 2_600,
        "input_tokens_details": {
            "cached_tokens": 2_000,
            "cache_write_tokens": 400,
            "cache_write_tokens_details": {"ttl_30m_tokens": 400, "ttl_12h_tokens": 0},
        },
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 4},
    }
    expected = TokenUsage(input=200, cache_read=2_000, cache_write_5m=400, output=9)
    assert partition_usage(chat) == expected
    assert partition_usage(responses) == TokenUsage(200, 2_000, 400, 0, 9, reasoning=4)


# -- OTel: the draft GenAI token counters, opt-in -----------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_otel_draft_token_counters_behind_an_option(base_url: str, enabled: bool) -> None:
    import anthropic
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    client = cachewatch.wrap(
        anthropic.Anthropic(api_key="test", base_url=base_url, max_retries=0),
        meter_provider=MeterProvider(metric_readers=[reader]),
        otel_token_counters=enabled,
        breakpoints="off",
        **make_telemetry().kwargs,
    )
    system = [{"type": "text", "text": SYSTEM, "cache_control": CC}]
    for _ in range(2):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=16,
            system=system,
            messages=[{"role": "user", "content": "hi"}],
        )
    metrics = {
        m.name: m
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert "gen_ai.client.token.usage" in metrics  # the current instruments stay
    prefix = "gen_ai.client.inference.usage."
    if not enabled:
        assert not [name for name in metrics if name.startswith(prefix)]
        return
    sums = {
        name.removeprefix(prefix): sum(p.value for p in m.data.data_points)
        for name, m in metrics.items()
        if name.startswith(prefix)
    }
    # Two requests of 1,201 prompt tokens: the first writes the 1,200-token system prompt, the second reads it.
    assert sums["input_tokens"] == 2 * 1_201
    assert sums["cache_write.input_tokens"] == 1_200
    assert sums["cache_read.input_tokens"] == 1_200
    assert sums["output_tokens"] > 0
    assert "reasoning.output_tokens" not in sums  # Anthropic reports none
    counter = metrics[prefix + "input_tokens"]
    assert counter.unit == "{token}"
    assert counter.data.is_monotonic
    (point,) = counter.data.data_points
    assert point.attributes["gen_ai.token.modality"] == "unknown"
    assert point.attributes["gen_ai.provider.name"] == "other"
    assert point.attributes["gen_ai.operation.name"] == "chat"
    assert point.attributes["gen_ai.request.model"] == "claude-sonnet-4-6"
