"""Traffic shapes: the structure of real requests, recorded without their content, for replay.

Data flow: request -> :meth:`ShapeRecorder.begin` (the body's structure, walked once by
the planner's layout) -> response starts -> :meth:`ShapeRecorder.started` -> usage
billed -> :meth:`ShapeRecorder.finish` (one line appended to the file) ...
``cachewatch replay FILE`` -> :func:`read_shapes` -> ``_replay``.

A shape file is JSON lines. The first line is a header,
``{"format": "cachewatch-traffic-shape", "version": 1}``; each other line is one exchange:

=============  =====================================================================
field          what it holds
=============  =====================================================================
``api``        ``messages``, ``chat_completions`` or ``dashscope_generation``
``profile``    the endpoint profile it was planned under (``anthropic``, ``dashscope``...)
``provider``   the provider label; ``workspace`` the workspace label
``model``      the model id the request named
``scope``      a digest of the credential (equal keys, equal scopes; never the key)
``t``          wall-clock times of the request, its response start and its end (seconds;
               ``null`` for a response that never started)
``seq``        the same three events' order within this writer, and ``w`` the writer,
               so concurrent requests replay in the order they really happened
``status``     the HTTP status; ``stream`` whether the response was a stream
``usage``      what was billed: ``[input, cache_read, cache_write_5m, cache_write_1h,
               output]`` (``null``: not reported)
``top``        the caller's top-level ``cache_control`` TTL, or ``null``
``ctx``        digest of ``tool_choice`` / ``thinking`` (Anthropic), or ``null``
``tools``      ``[digest, tokens]`` of chat-completions tool definitions, or ``null``
``messages``   per message: ``[role, header digest or null, tool_calls digest or null]``
``blocks``     per position, in tools -> system -> messages order: ``[location, index,
               kind, digest, tokens, eligible, plain, marker TTL or null]``
=============  =====================================================================

A block's ``digest`` identifies that block alone, with markers ignored and a plain string
equal to a one-text-block list, as the layout reads it;
``tokens`` is its share of the billed prompt (the planner's estimates, rescaled to the
total the provider billed); ``kind`` is from a closed set; ``index`` is the block's
message (tools and Anthropic system blocks: their own index); ``plain`` says the content
was a plain string. Roles outside the usual ones are recorded as ``other``. No text, no
key, no header value is ever written.

Every digest (blocks, tools, messages' headers and calls, ``ctx``, ``scope``) is 64 bits of
a BLAKE2b keyed with a random salt that is never written, over the XXH3-128 digest of the
data: equal data, equal digests within one recording session (one process, or one
``cachewatch proxy --workers N``, whose workers share their parent's salt), and a guess of
a block's text (a short answer, a name, a number) cannot be checked against the file.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import orjson
import xxhash

from ..accounting._records import TokenUsage
from ..planning._canonical import block_digest
from ..planning._layout import CONT, CUM, IDX, KEY, LOC, MARK, OK, Layout
from ..planning._profiles import ProfileRegistry
from ..planning._tokens import TokenEstimator
from ..planning._walk import walk

__all__ = [
    "FORMAT",
    "MAX_PROMPT_TOKENS",
    "VERSION",
    "Block",
    "Digest",
    "ExchangeShape",
    "Message",
    "ShapeError",
    "ShapeRecorder",
    "keyed_digest",
    "read_shapes",
]

FORMAT: Final = "cachewatch-traffic-shape"
VERSION: Final = 1
#: The largest prompt a line may describe (no context window comes near it): past it the
#: line is corrupt, and refused rather than rebuilt.
MAX_PROMPT_TOKENS: Final = 10_000_000
_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: The salt of every recorder of this process that is not given one (module docstring).
_PROCESS_SALT: Final = secrets.token_bytes(16)


@dataclass(frozen=True, slots=True)
class Block:
    """One position of a recorded request (see the module table)."""

    location: str
    index: int
    kind: str
    digest: str
    tokens: int
    eligible: bool
    plain: bool = False
    marker: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a recorded request: its role and digests of what else it carries."""

    role: str
    header: str | None = None
    calls: str | None = None


@dataclass(frozen=True, slots=True)
class ExchangeShape:
    """One recorded exchange (see the module table)."""

    api: str
    profile: str
    provider: str
    model: str
    workspace: str
    scope: str
    begin: float
    started: float | None
    ended: float
    order: tuple[int, int, int]
    writer: int
    status: int | None
    stream: bool
    usage: TokenUsage | None
    top_level: str | None
    context: str | None
    tools: tuple[str, int] | None
    messages: tuple[Message, ...]
    blocks: tuple[Block, ...]

    @property
    def prompt_tokens(self) -> int:
        """The billed prompt total (the blocks' sum when usage was not reported)."""
        if self.usage is not None and self.usage.prompt_total > 0:
            return self.usage.prompt_total
        return sum(b.tokens for b in self.blocks) + (self.tools[1] if self.tools else 0)


Digest = Callable[[bytes], str]


def keyed_digest(salt: bytes) -> Digest:
    """The recordings' digest under ``salt`` (module docstring): 16 hexadecimal digits."""
    mac = hashlib.blake2b(key=salt, digest_size=8)

    def digest(data: bytes) -> str:
        h = mac.copy()
        h.update(xxhash.xxh3_128_digest(data))
        return h.hexdigest()

    return digest


@dataclass(slots=True, eq=False)
class _Pending:
    """What :meth:`ShapeRecorder.begin` took from a request, until its end."""

    api: str
    profile: str
    provider: str
    model: str
    workspace: str
    scope: str
    begin: float
    seq_begin: int
    stream: bool
    raw_total: float
    top_level: str | None
    context: str | None
    tools: tuple[str, float] | None
    messages: list[list[Any]]
    #: Blocks with their raw increment in place of tokens (rescaled at the end).
    blocks: list[list[Any]]
    started: float | None = None
    seq_started: int = -1
    done: bool = False


class ShapeRecorder:
    """Appends the shape of every exchange to a JSON-lines file. Thread-safe, content-free.

    Args:
        target: a path (opened for appending, each line written with one ``write()``; a
            header is written when it is empty) or an open text stream.
        clock: wall clock in seconds (the engine's ``wall_clock``).
        registry: endpoint profiles (to record which profile a request was planned under).
        estimator: token estimator for the blocks' shares of the billed total.
        salt: the key of the digests (default: this process's, shared by its recorders);
            the recorders of one recording session must share it (module docstring).
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[str],
        *,
        clock: Callable[[], float] = time.time,
        registry: ProfileRegistry | None = None,
        estimator: TokenEstimator | None = None,
        salt: bytes | None = None,
    ) -> None:
        self.clock = clock
        self.registry = registry if registry is not None else ProfileRegistry()
        self.estimator = estimator if estimator is not None else TokenEstimator(use_qwen_tokenizer=False)
        self._lock = threading.Lock()
        self._seq = 0
        self._writer = secrets.randbits(31)
        self._digest = keyed_digest(salt if salt is not None else _PROCESS_SALT)
        self._file: IO[bytes] | None = None
        self._stream: IO[str] | None = None
        if isinstance(target, (str, os.PathLike)):
            # Unbuffered append: each line is one write() at the end of the file, so several
            # processes (proxy workers) can record into the same file line by line.
            self._file = Path(os.fspath(target)).open("ab", buffering=0)  # noqa: SIM115 (closed by close())
            empty = os.fstat(self._file.fileno()).st_size == 0
        else:
            self._stream = target
            empty = True
        if empty:
            self._write({"format": FORMAT, "version": VERSION})

    def close(self) -> None:
        """Close the file (when the recorder opened it)."""
        with self._lock:
            if self._file is not None and not self._file.closed:
                self._file.close()

    def _next(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _write(self, line: Mapping[str, Any]) -> None:
        data = orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            if self._file is not None:
                if not self._file.closed:
                    self._file.write(data)
            elif self._stream is not None and not self._stream.closed:
                self._stream.write(data.decode())
                self._stream.flush()

    def begin(
        self,
        *,
        api: str,
        host: str,
        path: str,
        body: bytes,
        scope: str = "",
        provider: str = "other",
        workspace: str = "default",
        stream: bool = False,
    ) -> _Pending | None:
        """Take the shape of a request about to go out; None when it has none to record."""
        obj = orjson.loads(body)
        if not isinstance(obj, dict):
            return None
        model = obj.get("model")
        model = model if isinstance(model, str) else "unknown"
        counter = self.estimator.prefix(model=model, provider=provider)
        layout = walk(api, obj, counter)
        if layout is None:
            return None
        profile = self.registry.match(host, path).name
        messages_of = _messages(api, obj)
        top = obj.get("cache_control") if api == "messages" else None
        top_ttl = None if not isinstance(top, dict) else ("1h" if top.get("ttl") == "1h" else "5m")
        context = None
        if api == "messages" and (obj.get("tool_choice"), obj.get("thinking")) != (None, None):
            context = self._digest(orjson.dumps([obj.get("tool_choice"), obj.get("thinking")]))
        tools: tuple[str, float] | None = None
        if layout.tools:
            head = self.estimator.prefix(model=model, provider=provider)
            head.add_tools(layout.tools)
            for tool in layout.tools:
                head.add_json(tool)
            tools = (self._digest(orjson.dumps(layout.tools)), head.raw)
        return _Pending(
            api=api,
            profile=profile,
            provider=provider,
            model=model,
            workspace=workspace,
            scope=self._digest(scope.encode("utf-8", "surrogatepass")) if scope else "",
            begin=self.clock(),
            seq_begin=self._next(),
            stream=stream,
            raw_total=counter.raw,
            top_level=top_ttl,
            context=context,
            tools=tools,
            messages=[_message(m, self._digest) for m in messages_of],
            blocks=_blocks(layout, tools[1] if tools else 0.0, self._digest),
        )

    def started(self, pending: _Pending) -> None:
        """The response started."""
        if pending.started is None:
            pending.started = self.clock()
            pending.seq_started = self._next()

    def finish(self, pending: _Pending, usage: TokenUsage | None, status: int | None) -> None:
        """The exchange ended: append its line."""
        if pending.done:
            return
        pending.done = True
        ended = self.clock()
        seq_end = self._next()
        total = usage.prompt_total if usage is not None else 0
        scale = total / pending.raw_total if total > 0 and pending.raw_total > 0 else 1.0
        blocks = [[*b[:4], round(b[4] * scale), *b[5:]] for b in pending.blocks]
        tools = [pending.tools[0], round(pending.tools[1] * scale)] if pending.tools else None
        line = {
            "api": pending.api,
            "profile": pending.profile,
            "provider": pending.provider,
            "model": pending.model,
            "workspace": pending.workspace,
            "scope": pending.scope,
            "t": [round(pending.begin, 3), _round(pending.started), round(ended, 3)],
            "seq": [pending.seq_begin, pending.seq_started, seq_end],
            "w": self._writer,
            "status": status,
            "stream": pending.stream,
            "usage": None
            if usage is None
            else [usage.input, usage.cache_read, usage.cache_write_5m, usage.cache_write_1h, usage.output],
            "top": pending.top_level,
            "ctx": pending.context,
            "tools": tools,
            "messages": pending.messages,
            "blocks": blocks,
        }
        self._write(line)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _messages(api: str, obj: Mapping[str, Any]) -> list[Any]:
    if api == "dashscope_generation":
        inp = obj.get("input")
        found = inp.get("messages") if isinstance(inp, dict) else None
    else:
        found = obj.get("messages")
    return found if isinstance(found, list) else []


def _message(message: Any, digest: Digest) -> list[Any]:
    if not isinstance(message, dict):
        return ["other", None, None]
    role = message.get("role")
    role_s = role if isinstance(role, str) and role in _ROLES else "other"
    name, call_id = message.get("name"), message.get("tool_call_id")
    header = None if name is None and call_id is None else digest(orjson.dumps([role_s, name, call_id]))
    calls = message.get("tool_calls")
    return [role_s, header, digest(orjson.dumps(calls)) if isinstance(calls, list) and calls else None]


def _blocks(layout: Layout, head: float, digest_of: Digest) -> list[list[Any]]:
    out: list[list[Any]] = []
    before = head
    for i, pos in enumerate(layout.positions):
        block = pos[CONT][pos[KEY]]
        plain = type(block) is str
        digest = digest_of(block_digest(block))
        out.append(
            [pos[LOC], pos[IDX][0], layout.kind(i), digest, pos[CUM] - before, pos[OK], plain, pos[MARK]]
        )
        before = pos[CUM]
    return out


# -- reading --------------------------------------------------------------------------------


class ShapeError(ValueError):
    """A line that is not a traffic shape (the message names the line)."""


def read_shapes(source: str | os.PathLike[str] | IO[str]) -> Iterator[ExchangeShape]:
    """The exchanges of a shape file, in file order; :class:`ShapeError` on a malformed line.

    The file must open with the header line (every recorder writes it first): an empty
    file, or one of some other kind, is refused at its first line.
    """
    if isinstance(source, (str, os.PathLike)):
        # Read as bytes: a line that is not UTF-8 is a malformed line like any other.
        with Path(os.fspath(source)).open("rb") as stream:
            yield from _lines(stream)
    else:
        yield from _lines(source)


def _lines(stream: Iterable[str | bytes]) -> Iterator[ExchangeShape]:
    header = False
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ShapeError(f"line {n}: not JSON") from exc
        if not isinstance(data, dict):
            raise ShapeError(f"line {n}: not an object")
        if "format" in data:
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ShapeError(f"line {n}: not a {FORMAT} version {VERSION} file")
            header = True
            continue
        if not header:
            raise ShapeError(f"line {n}: not a {FORMAT} file (it opens without the header line)")
        try:
            yield _exchange(data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ShapeError(f"line {n}: {type(exc).__name__}: {exc}") from exc
    if not header:
        raise ShapeError(f"empty: not a {FORMAT} file")


def _exchange(data: Mapping[str, Any]) -> ExchangeShape:
    begin, started, ended = data["t"]
    seq = data["seq"]
    usage = data.get("usage")
    tools = data.get("tools")
    blocks = tuple(_block(b) for b in data["blocks"])
    tools_shape = None if tools is None else (_digest(tools[0]), int(tools[1]))
    prompt = sum(b.tokens for b in blocks) + (tools_shape[1] if tools_shape else 0)
    if not 0 <= prompt <= MAX_PROMPT_TOKENS:
        # Replay rebuilds each request at its size: a corrupt count must not make it hang.
        raise ValueError(f"a prompt of {prompt:,} tokens is not a recorded request")
    return ExchangeShape(
        api=str(data["api"]),
        profile=str(data["profile"]),
        provider=str(data.get("provider", "other")),
        model=str(data["model"]),
        workspace=str(data.get("workspace", "default")),
        scope=str(data.get("scope", "")),
        begin=float(begin),
        started=None if started is None else float(started),
        ended=float(ended),
        order=(int(seq[0]), int(seq[1]), int(seq[2])),
        writer=int(data.get("w", 0)),
        status=None if data.get("status") is None else int(data["status"]),
        stream=bool(data.get("stream", False)),
        usage=None if usage is None else TokenUsage(*(int(x) for x in usage[:5])),
        top_level=_ttl(data.get("top")),
        context=None if data.get("ctx") is None else str(data["ctx"]),
        tools=tools_shape,
        messages=tuple(Message(str(m[0]), _opt(m[1]), _opt(m[2])) for m in data.get("messages", ())),
        blocks=blocks,
    )


def _block(b: Sequence[Any]) -> Block:
    location = str(b[0])
    if location not in ("tools", "system", "messages"):
        raise ValueError(f"unknown location {location!r}")
    return Block(
        location, int(b[1]), str(b[2]), _digest(b[3]), max(0, int(b[4])), bool(b[5]), bool(b[6]), _ttl(b[7])
    )


def _digest(value: object) -> str:
    """A recorded digest: hexadecimal (replay seeds each block's synthetic text with it)."""
    digest = str(value)
    if not 0 < len(digest) <= 32 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        raise ValueError(f"{digest[:40]!r} is not a block digest")
    return digest


def _ttl(value: object) -> str | None:
    return None if value is None else ("1h" if value == "1h" else "5m")


def _opt(value: object) -> str | None:
    return None if value is None else str(value)
