"""The emulator's ASGI app (starlette), plus helpers to serve it.

Routes are recognised by path suffix, so any base prefix works:

=====================================================  ===========================
path ends with                                         API
=====================================================  ===========================
``/v1/messages``                                       Anthropic Messages
``/v1/messages/count_tokens``                          Anthropic token count
``/chat/completions``                                  OpenAI-compatible chat
``/responses``                                         OpenAI Responses
``/services/aigc/text-generation/generation``          DashScope native
``/services/aigc/multimodal-generation/generation``    DashScope native (multimodal)
=====================================================  ===========================

``GET /healthz`` answers ``{"status": "ok"}``. The cache semantics live in
``_cache``; this module only wires a request through it: parse -> resolve
breakpoints -> :meth:`CacheStore.begin` (at receipt) -> optional hook and latency
-> :meth:`Reservation.commit` (when the response starts; for a DashScope stream, when it
ends: that cache is created after the model has responded) -> body or SSE frames.

Nothing here logs request or response bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import _anthropic, _dashscope, _openai, _responses
from ._cache import Breakpoint, CacheControlError, CacheStore, Reservation, resolve_breakpoints
from ._completion import complete
from ._profiles import PROFILES, Profile, select_profile
from ._wire import ParsedRequest, RequestError

__all__ = [
    "DEFAULT_PORT",
    "Emulator",
    "EmulatorConfig",
    "ProfileChoice",
    "create_app",
    "run_in_thread",
    "serve",
]

#: Port of :func:`serve` when none is given.
DEFAULT_PORT = 8790

ProfileChoice = Literal["auto", "anthropic", "dashscope", "openai"]

_Api = Literal[
    "messages", "count_tokens", "chat_completions", "responses", "generation", "multimodal_generation"
]
_SUFFIXES: tuple[tuple[str, _Api], ...] = (
    ("/v1/messages/count_tokens", "count_tokens"),
    ("/v1/messages", "messages"),
    ("/chat/completions", "chat_completions"),
    ("/responses", "responses"),
    ("/services/aigc/text-generation/generation", "generation"),
    ("/services/aigc/multimodal-generation/generation", "multimodal_generation"),
)
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator behaves. Every field has a default suited to fast tests.

    Args:
        profile: ``"auto"`` picks per request from path and host
            (:func:`~cachewatch.emulator.select_profile`); a profile name forces it.
            The header ``x-emulator-profile`` overrides both for one request.
        clock: Seconds on any epoch; TTLs are measured on it. Inject one
            (e.g. :class:`~cachewatch.emulator.ManualClock`) to expire entries in tests.
        first_byte_delay: Seconds before the response starts (JSON body or first SSE frame).
        chunk_delay: Seconds between SSE frames.
        words_per_chunk: Words of completion text per streamed delta.
        min_tokens: Minimum cacheable tokens per model id (prefix keys, longest wins),
            consulted before the profile's table.
        max_entries: Cache entries kept before the least recently used is evicted.
        isolate_by_key: Separate caches per API key (``x-api-key`` / bearer token) and
            workspace header (``x-dashscope-workspace``). Keys are only ever hashed.
        before_response: Awaited after the request is registered with the cache and
            before its response starts; a test can hold a request there to overlap others.
        implicit_hit_rate: DashScope's implicit cache is best effort ("hits not
            guaranteed", research B.6): an unmarked request finds what is cached with this
            chance, else it reads nothing and caches its prefixes again. Drawn from a
            generator seeded with ``seed``, so a serial workload misses the same requests
            on every run.
        seed: Seed of the implicit cache's draws.
    """

    profile: ProfileChoice = "auto"
    clock: Callable[[], float] = time.monotonic
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    words_per_chunk: int = 1
    min_tokens: Mapping[str, int] = field(default_factory=dict)
    max_entries: int = 100_000
    isolate_by_key: bool = True
    before_response: Callable[[], Awaitable[None]] | None = None
    implicit_hit_rate: float = 1.0
    seed: int = 0


class Emulator:
    """The emulator: an ASGI app with real prompt-caching semantics.

    Usage::

        emulator = Emulator(EmulatorConfig(clock=clock))
        with run_in_thread(emulator) as base_url:
            client = anthropic.Anthropic(api_key="test", base_url=base_url)

    Args:
        config: Behaviour; defaults to :class:`EmulatorConfig()`.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        #: The shared prompt cache (inspect or :meth:`reset` it in tests).
        self.cache = CacheStore(self.config.clock, max_entries=self.config.max_entries)
        self._draws = random.Random(self.config.seed)
        self._draws_lock = threading.Lock()
        self._app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    def reset(self) -> None:
        """Forget every cache entry."""
        self.cache.clear()

    def _implicit_hits(self) -> bool:
        """Whether this unmarked request's implicit lookup finds what is cached."""
        rate = self.config.implicit_hit_rate
        if rate >= 1.0:
            return True
        with self._draws_lock:
            return self._draws.random() < rate

    def profile_for(self, path: str, headers: Mapping[str, str]) -> Profile:
        """The profile a request to ``path`` with ``headers`` is served under."""
        forced = headers.get("x-emulator-profile") or self.config.profile
        if forced in PROFILES:
            return PROFILES[forced]
        return select_profile(path, headers.get("host", ""))

    def _namespace(self, request: Request) -> str:
        if not self.config.isolate_by_key:
            return ""
        headers = request.headers
        # The same key isolates the same way however it is sent: the anthropic SDK sends
        # ``Authorization: Bearer <key>``, curl examples and proxies ``x-api-key: <key>``.
        key = headers.get("x-api-key") or headers.get("api-key") or ""
        if not key:
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else auth
        workspace = headers.get("x-dashscope-workspace", "")
        return hashlib.sha256(f"{key}\x00{workspace}".encode()).hexdigest()[:32]

    async def _handle(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        api = next((a for suffix, a in _SUFFIXES if path.endswith(suffix)), None)
        if request.method == "GET" or api is None:
            if request.method == "GET" and path in ("", "/health", "/healthz"):
                return _json({"status": "ok"})
            return _json(_anthropic.error_body("Not Found", "not_found_error"), 404)
        # The Responses API is served with OpenAI's automatic caching wherever it is mounted
        # (DashScope's Responses API uses a session cache that is not modelled).
        profile = PROFILES["openai"] if api == "responses" else self.profile_for(path, request.headers)
        request_id = uuid.uuid4().hex
        try:
            raw = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise RequestError("request body must be a JSON object")
            if api == "count_tokens":
                return _json({"input_tokens": _anthropic.render(body).total_tokens})
            req = self._parse(api, body, request)
            breakpoints = resolve_breakpoints(req.prompt, req.top_level, profile)
        except (orjson.JSONDecodeError, RequestError, CacheControlError) as exc:
            message = str(exc) if not isinstance(exc, orjson.JSONDecodeError) else "invalid JSON body"
            return _json(_error(api, message, request_id), 400)

        min_tokens = profile.min_tokens_for(req.model, self.config.min_tokens)
        namespace = self._namespace(request)
        implicit = False
        marked = bool(breakpoints)
        if marked and api != "messages" and not profile.explicit_cache_for(req.model):
            # DashScope, a model without the explicit cache: its markers do nothing, and
            # they still turn the request's implicit cache off (research B.1, B.2).
            breakpoints = []
        if not marked and api != "messages" and profile.implicit_cache_for(req.model):
            # DashScope: a request without markers uses the implicit cache (its own store),
            # which keeps every prefix of it: a later request sharing its start reads that.
            implicit = True
            breakpoints = [Breakpoint(len(req.prompt.positions) - 1, "5m")]
            min_tokens = profile.implicit_min_tokens
            namespace += ":implicit"
        reservation = self.cache.begin(
            req.prompt,
            breakpoints,
            profile=profile,
            min_tokens=min_tokens,
            namespace=namespace,
            implicit=implicit or None,
            bill_writes=profile.implicit and profile.bills_writes(req.model),
            # Both implicit caches (DashScope's, OpenAI's automatic one) match any earlier
            # prompt's prefix, not only a whole earlier prompt (research B.6, C.1).
            every_prefix=implicit or profile.implicit,
            lookup=not implicit or self._implicit_hits(),
        )
        completion = complete(
            req.prompt.fingerprint,
            max_tokens=req.max_tokens,
            tool=req.tool,
            preamble=req.preamble,
            words_per_piece=self.config.words_per_chunk,
        )
        usage = reservation.usage
        explicit = bool(breakpoints) and not profile.implicit and not implicit
        headers = {"request-id": f"req_{request_id}", "x-request-id": request_id}
        frames: Iterator[bytes]
        if api == "messages":
            message_id = f"msg_{request_id[:24]}"
            if req.stream:
                frames = _anthropic.stream_events(message_id, req, usage, completion, profile)
            else:
                result = _anthropic.message_body(message_id, req, usage, completion, profile)
        elif api == "chat_completions":
            chat_id = f"chatcmpl-{request_id[:24]}"
            if req.stream:
                frames = _openai.stream_chunks(
                    chat_id, req, usage, completion, profile, explicit, implicit=implicit
                )
            else:
                result = _openai.chat_body(
                    chat_id, req, usage, completion, profile, explicit, implicit=implicit
                )
        elif api == "responses":
            if req.stream:
                frames = _responses.stream_events(request_id[:24], req, usage, completion)
            else:
                result = _responses.response_body(request_id[:24], req, usage, completion)
        elif req.stream:
            frames = _dashscope.stream_events(
                request_id, req, usage, completion, profile, explicit, implicit=implicit
            )
        else:
            result = _dashscope.generation_body(
                request_id, req, usage, completion, profile, explicit, implicit=implicit
            )

        if req.stream:
            return StreamingResponse(
                self._stream(reservation, frames, at_end=profile.name == "dashscope"),
                media_type="text/event-stream",
                headers={**headers, **_SSE_HEADERS},
            )
        await self._before_start()
        reservation.commit()
        return _json(result, headers=headers)

    def _parse(self, api: _Api, body: dict[str, Any], request: Request) -> ParsedRequest:
        if api == "messages":
            return _anthropic.parse(body)
        if api == "chat_completions":
            return _openai.parse(body)
        if api == "responses":
            return _responses.parse(body)
        sse = request.headers.get("x-dashscope-sse", "").lower() == "enable"
        sse = sse or "text/event-stream" in request.headers.get("accept", "")
        return _dashscope.parse(body, multimodal=api == "multimodal_generation", stream=sse)

    async def _before_start(self) -> None:
        if self.config.before_response is not None:
            await self.config.before_response()
        if self.config.first_byte_delay > 0:
            await asyncio.sleep(self.config.first_byte_delay)

    async def _stream(
        self, reservation: Reservation, frames: Iterator[bytes], *, at_end: bool = False
    ) -> AsyncIterator[bytes]:
        await self._before_start()
        if not at_end:
            # The entries this request writes become readable as its first event goes out
            # (Anthropic, research A.3: "after the first response begins").
            reservation.commit()
        try:
            for n, frame in enumerate(frames):
                if n and self.config.chunk_delay > 0:
                    await asyncio.sleep(self.config.chunk_delay)
                yield frame
        finally:
            # DashScope creates the cache after the model has responded (research B.2).
            reservation.commit()


def _json(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _error(api: _Api, message: str, request_id: str) -> dict[str, Any]:
    if api in ("messages", "count_tokens"):
        return _anthropic.error_body(message, request_id=f"req_{request_id}")
    if api == "chat_completions":
        return _openai.error_body(message)
    if api == "responses":
        return _responses.error_body(message)
    return _dashscope.error_body(message, request_id=request_id)


def create_app(config: EmulatorConfig | None = None, **options: Any) -> Emulator:
    """A new emulator (an ASGI app). ``options`` override fields of ``config``.

    Example::

        app = create_app(profile="dashscope", clock=clock)
    """
    base = config or EmulatorConfig()
    return Emulator(replace(base, **options) if options else base)


@contextlib.contextmanager
def run_in_thread(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL.

    ``port=0`` binds an ephemeral port. Unlike ``httpx.ASGITransport``, which buffers
    a whole response, this streams for real, so SSE timing and ordering hold.

    Example::

        with run_in_thread(create_app()) as base_url:
            httpx.post(f"{base_url}/v1/messages", json=...)
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="auto")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cachewatch-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the emulator did not start on {host}:{port}")
        time.sleep(0.005)
    try:
        bound = server.servers[0].sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        yield f"http://{shown}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=5.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5.0)


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    profile: ProfileChoice = "auto",
    *,
    config: EmulatorConfig | None = None,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Run the emulator with uvicorn until interrupted (``cachewatch emulator`` calls this).

    Binds 127.0.0.1 by default. ``options`` are :class:`EmulatorConfig` fields.
    The access log shows methods and paths only, never bodies.
    """
    import uvicorn

    if config is None or profile != "auto":
        options["profile"] = profile
    app = create_app(config, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="off")
