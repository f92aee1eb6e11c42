"""Label cardinality stays bounded whatever traffic passes through (SPEC section 5).

* ``model``: at most ``max_models`` (default 50) distinct values per process, then ``other``;
  a request without a model is ``unknown``. Checked with 5,000 distinct names, on every
  metric that carries the label.
* ``provider``: a bounded set mapped from the host; unknown (and look-alike) hosts are ``other``.
* ``workspace``: a mapped name, the DashScope workspace id from a
  ``{WorkspaceId}.{region}.maas.aliyuncs.com`` host, or ``default``; bounded too.
* ``api``: the four API labels only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import orjson
import pytest

from _helpers import (
    COMBOS,
    JSON_HEADERS,
    Telemetry,
    fam,
    label_values,
    make_telemetry,
    metric_samples,
    response,
    wrapped,
)

API_LABELS = {"messages", "chat_completions", "responses", "dashscope_generation"}
MODEL_METRICS = (
    "cachewatch_requests_total",
    "cachewatch_tokens_total",
    "cachewatch_request_duration_seconds_count",
)


def echo_handler(family: ModuleType, *, response_model: bool = True):
    """Answers every request with an Anthropic JSON body naming the request's model (or a given one)."""

    def handle(request: Any) -> Any:
        try:
            req = orjson.loads(request.content)
        except orjson.JSONDecodeError:
            req = {}
        model = request.headers.get("x-response-model") or req.get("model") or "claude-x"
        body = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 2},
        }
        if response_model:
            body["model"] = model
        return response(family, 200, orjson.dumps(body), JSON_HEADERS)

    return handle


Call = tuple[str, bytes, dict[str, str]]


def send_all(family: str, mode: str, calls: Iterable[Call], **options: Any) -> Telemetry:
    """Send every ``(url, body, headers)`` through one cachewatch transport; return its telemetry."""
    module = fam(family)
    tel = make_telemetry()
    transport = wrapped(mode, module.MockTransport(echo_handler(module)), **{**tel.kwargs, **options})
    calls = list(calls)
    if mode == "sync":
        with module.Client(transport=transport) as client:
            for url, body, headers in calls:
                assert client.post(url, content=body, headers=headers).status_code == 200
    else:

        async def run() -> None:
            async with module.AsyncClient(transport=transport) as client:
                for url, body, headers in calls:
                    assert (await client.post(url, content=body, headers=headers)).status_code == 200

        asyncio.run(run())
    return tel


def model_call(model: str | None, url: str = "https://api.anthropic.com/v1/messages") -> Call:
    body: dict[str, Any] = {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    return (url, orjson.dumps(body), {"x-api-key": "sk-test"})


def check_model_labels(tel: Telemetry, admitted: set[str], total: int) -> None:
    for name in MODEL_METRICS:
        assert label_values(tel.registry, name, "model") <= admitted | {"other", "unknown"}, name
    models = label_values(tel.registry, "cachewatch_requests_total", "model")
    assert models == admitted | {"other"}
    series = metric_samples(tel.registry, "cachewatch_requests_total")
    assert len(series) == len(admitted) + 1
    assert sum(v for _, v in series) == total
    assert tel.requests(model="other") == total - len(admitted)
    # Token series are bounded by the same cap (five types per model label).
    assert len(metric_samples(tel.registry, "cachewatch_tokens_total")) <= 5 * (len(admitted) + 1)


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_thousands_of_models_are_capped_at_the_default(family, mode):
    names = [f"model-{i:05d}" for i in range(5000)]
    tel = send_all(family, mode, (model_call(n) for n in names))
    check_model_labels(tel, set(names[:50]), 5000)


def test_max_models_option_caps_lower():
    names = [f"tiny-{i:04d}" for i in range(500)]
    tel = send_all("httpx", "sync", (model_call(n) for n in names), max_models=5)
    check_model_labels(tel, set(names[:5]), 500)


def test_admitted_models_keep_their_label_after_the_cap_is_reached():
    names = [f"m-{i:03d}" for i in range(200)]
    calls = [model_call(n) for n in names] + [model_call("m-000"), model_call("m-049"), model_call("m-050")]
    tel = send_all("httpx2", "sync", calls)
    assert tel.requests(model="m-000") == 2
    assert tel.requests(model="m-049") == 2
    assert tel.requests(model="m-050") == 0
    assert tel.requests(model="other") == 151


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_response_models_are_capped_too(family, mode):
    # No model in the request: the label may come from the response, still capped.
    calls = [
        ("https://api.anthropic.com/v1/messages", b'{"messages":[]}', {"x-response-model": f"resp-{i:04d}"})
        for i in range(300)
    ]
    tel = send_all(family, mode, calls)
    models = label_values(tel.registry, "cachewatch_requests_total", "model")
    assert len(models) <= 52
    assert models <= {f"resp-{i:04d}" for i in range(300)} | {"other", "unknown"}
    assert tel.requests() == 300


def test_model_labels_shared_across_apis_stay_capped():
    urls = [
        "https://api.anthropic.com/v1/messages",
        "https://api.openai.com/v1/chat/completions",
        "https://api.openai.com/v1/responses",
        "https://dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation",
    ]
    calls = [model_call(f"x-{i:04d}", urls[i % 4]) for i in range(1000)]
    tel = send_all("httpx", "sync", calls)
    assert len(label_values(tel.registry, "cachewatch_requests_total", "model")) == 51
    assert label_values(tel.registry, "cachewatch_requests_total", "api") == API_LABELS


# -- providers ---------------------------------------------------------------------------------

PROVIDER_HOSTS = {
    "api.anthropic.com": "anthropic",
    "dashscope.aliyuncs.com": "dashscope",
    "dashscope-intl.aliyuncs.com": "dashscope",
    "api.openai.com": "openai",
    "api.deepseek.com": "deepseek",
    "openrouter.ai": "openrouter",
    "myres.openai.azure.com": "azure_openai",
    # Unknown and look-alike hosts.
    "llm.example.com": "other",
    "localhost": "other",
    "127.0.0.1": "other",
    "api.anthropic.com.evil.example": "other",
    "evil-api.anthropic.com.attacker.net": "other",
    "notopenrouter.ai": "other",
    "openai.com.example.org": "other",
}


@pytest.mark.parametrize(("host", "provider"), sorted(PROVIDER_HOSTS.items()))
def test_provider_label_from_host(host, provider):
    tel = send_all("httpx", "sync", [model_call("claude-x", f"https://{host}/v1/messages")])
    assert label_values(tel.registry, "cachewatch_requests_total", "provider") == {provider}


def test_many_unknown_hosts_all_map_to_other():
    calls = [model_call("claude-x", f"https://relay-{i}.example{i % 7}.net/v1/messages") for i in range(500)]
    calls += [
        model_call("claude-x", f"http://10.0.{i // 250}.{i % 250}:{8000 + i}/v1/chat/completions")
        for i in range(500)
    ]
    tel = send_all("httpx", "sync", calls)
    assert label_values(tel.registry, "cachewatch_requests_total", "provider") == {"other"}
    assert tel.requests(provider="other") == 1000


def test_configured_provider_entries():
    calls = [
        model_call("claude-x", "http://localhost:8787/v1/messages"),
        model_call("claude-x", "http://localhost:9999/v1/messages"),
        model_call("claude-x", "https://gateway.corp.example/v1/messages"),
    ]
    tel = send_all("httpx", "sync", calls, providers={"localhost:8787": "emulator", "corp.example": "corp"})
    assert tel.requests(provider="emulator") == 1
    assert tel.requests(provider="other") == 1
    assert tel.requests(provider="corp") == 1


# -- workspaces --------------------------------------------------------------------------------


def dashscope_call(workspace: str, region: str = "ap-southeast-1") -> Call:
    url = f"https://{workspace}.{region}.maas.aliyuncs.com/apps/anthropic/v1/messages"
    return model_call("qwen3.6-plus", url)


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_dashscope_workspace_host_gives_the_workspace_label(family, mode):
    calls = [
        dashscope_call("llm-ws1a2b3c4d"),
        dashscope_call("llm-ws1a2b3c4d"),
        dashscope_call("ws-team7", "cn-beijing"),
    ]
    calls.append(model_call("qwen3.6-plus", "https://dashscope.aliyuncs.com/apps/anthropic/v1/messages"))
    tel = send_all(family, mode, calls)
    assert tel.requests(workspace="llm-ws1a2b3c4d", provider="dashscope") == 2
    assert tel.requests(workspace="ws-team7", provider="dashscope") == 1
    assert tel.requests(workspace="default", provider="dashscope") == 1
    assert label_values(tel.registry, "cachewatch_requests_total", "workspace") == {
        "llm-ws1a2b3c4d",
        "ws-team7",
        "default",
    }
    spans = {s.attributes["cachewatch.workspace"] for s in tel.spans()}
    assert spans == {"llm-ws1a2b3c4d", "ws-team7", "default"}


def test_workspace_label_set_is_bounded():
    calls = [dashscope_call(f"llm-{i:06d}") for i in range(1000)]
    tel = send_all("httpx", "sync", calls)
    workspaces = label_values(tel.registry, "cachewatch_requests_total", "workspace")
    assert len(workspaces) <= 102
    assert len(metric_samples(tel.registry, "cachewatch_requests_total")) <= 102
    assert workspaces - {f"llm-{i:06d}" for i in range(1000)} <= {"other", "default"}
    assert tel.requests() == 1000
    # Admitted workspaces keep their label; the rest are pooled.
    assert tel.requests(workspace="llm-000000") == 1
    assert tel.requests(workspace="llm-000999") == 0


def test_mapped_workspace_names_and_unmapped_keys_stay_bounded():
    mapping = {f"sk-key-{i}": f"team-{i % 3}" for i in range(30)}
    calls = [
        ("https://api.anthropic.com/v1/messages", model_call("claude-x")[1], {"x-api-key": f"sk-key-{i}"})
        for i in range(600)
    ]
    tel = send_all("httpx", "sync", calls, workspaces=mapping)
    assert label_values(tel.registry, "cachewatch_requests_total", "workspace") == {
        "team-0",
        "team-1",
        "team-2",
        "default",
    }
    assert tel.requests(workspace="default") == 570


# -- OpenTelemetry metric attributes ------------------------------------------------------------


def otel_attribute_values(reader: Any, attribute: str) -> set[Any]:
    """Every value of ``attribute`` on the data points of cachewatch's OTel metrics."""
    data = reader.get_metrics_data()
    return {
        point.attributes[attribute]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
        if attribute in point.attributes
    }


def test_otel_metric_attributes_from_responses_stay_bounded():
    # The model and the error type of a response are attributes of the GenAI client
    # metrics (gen_ai.response.model, error.type): like the model label, they come from
    # the upstream and must not create a data point per distinct value.
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    module = fam("httpx")

    def handle(request: Any) -> Any:
        i = int(request.headers["x-i"])
        if i % 2:
            error = {"type": "error", "error": {"type": f"custom_error_{i}", "message": "no"}}
            return response(module, 400, orjson.dumps(error), JSON_HEADERS)
        body = {
            "id": "msg_1",
            "type": "message",
            "model": f"resp-{i:04d}",
            "content": [],
            "usage": {"input_tokens": 3, "output_tokens": 2},
        }
        return response(module, 200, orjson.dumps(body), JSON_HEADERS)

    reader = InMemoryMetricReader()
    tel = make_telemetry()
    transport = wrapped(
        "sync",
        module.MockTransport(handle),
        meter_provider=MeterProvider(metric_readers=[reader]),
        **tel.kwargs,
    )
    with module.Client(transport=transport) as client:
        for i in range(600):
            body = model_call("claude-x")[1]
            client.post("https://api.anthropic.com/v1/messages", content=body, headers={"x-i": str(i)})
    models = otel_attribute_values(reader, "gen_ai.response.model")
    errors = otel_attribute_values(reader, "error.type")
    assert 0 < len(models) <= 51, len(models)
    assert 0 < len(errors) <= 51, len(errors)
    assert tel.requests() == 600


def test_the_model_cap_holds_across_wrapped_clients_of_one_registry():
    # A wrapped client per tenant (or per request): the cap was per wrap(), so 3 clients
    # exported 151 model values and 120 transports 120. It is per registry (per process).
    import httpx
    from prometheus_client import CollectorRegistry

    import cachewatch

    registry = CollectorRegistry()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"usage": {"input_tokens": 1, "output_tokens": 1}})

    for c in range(3):
        client = cachewatch.wrap(httpx.Client(transport=httpx.MockTransport(handler)), registry=registry)
        for m in range(60):
            client.post(
                "https://api.anthropic.com/v1/messages",
                json={
                    "model": f"tenant{c}-model-{m}",
                    "max_tokens": 1,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
    models = label_values(registry, "cachewatch_requests_total", "model")
    assert len(models - {"other"}) == 50
    assert "other" in models
