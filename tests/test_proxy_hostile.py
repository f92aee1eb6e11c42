"""``cachewatch proxy`` against hostile clients and broken upstreams (SPEC 10, issue 15).

Two proxies run as ``cachewatch proxy`` subprocesses (the real CLI, uvicorn, httptools),
in front of :class:`RawUpstream`, a small threaded TCP server whose behaviour each
request picks with an ``x-upstream`` header (the proxy forwards it): answer, hang, close
early, cut a body short, go silent mid-stream, stream a line without end, a compression
bomb, an endless stream. It records every request target exactly as received and when
the proxy closed each upstream connection.

- ``strict``: short limits and timeouts set on the command line (1 s, 8 KiB heads, 64 KiB
  bodies, 64 KiB SSE lines, 1 MiB decoded), so every limit is reached quickly;
- ``patient``: long upstream timeouts (60 s), so that an upstream connection closed
  within the test's bounded wait was released because its client left, not by a timeout.

Clients are raw sockets. Each test asserts the clean outcome, then that the proxy is
healthy (a normal request and ``/metrics`` still answer). Waits are bounded; nothing
asserts how fast anything happened. At the end, neither proxy printed a traceback.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

BASE = "/apps/anthropic"
START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_h","model":"claude-x",'
    b'"usage":{"input_tokens":11,"output_tokens":1}}}\n\n'
)
DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n'
END = (
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":5}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
BODY = orjson.dumps({"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = orjson.dumps(
    {"model": "claude-x", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)
JSON_REPLY = orjson.dumps(
    {"id": "msg_ok", "type": "message", "model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 2}}
)
STRICT_ARGS = [
    "--upstream-headers-timeout", "1", "--upstream-idle-timeout", "1", "--upstream-connect-timeout", "2",
    "--client-head-timeout", "1", "--client-body-timeout", "1", "--client-request-timeout", "2.5",
    "--keep-alive-timeout", "1", "--client-send-timeout", "1", "--max-head-bytes", "8192",
    "--max-headers", "50", "--max-body", "65536", "--max-event-bytes", "65536", "--max-decoded-bytes", "1048576",
]  # fmt: skip
PATIENT_ARGS = ["--upstream-headers-timeout", "60", "--upstream-idle-timeout", "60"]
WAIT = 15.0  # every bounded wait (a bound, never a speed check)


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- the upstream ---------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it, and whether the proxy closed its connection."""

    target: bytes
    headers: dict[bytes, bytes]
    body: bytes
    closed: threading.Event = field(default_factory=threading.Event)
    sent: int = 0  # body bytes the upstream managed to send


class RawUpstream:
    """A threaded HTTP/1.1 server from raw sockets; one request per connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()

    def by_marker(self, marker: bytes) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.headers.get(b"x-marker") == marker]

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stop.is_set():
                conn, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(120)
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            target = lines[0].split(b" ")[1]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            while len(body) < length:
                piece = conn.recv(65536)
                if not piece:
                    return
                body += piece
            seen = Seen(target, headers, body)
            with self.lock:
                self.seen.append(seen)
            behaviour = headers.get(b"x-upstream", b"ok").decode()
            try:
                getattr(self, "_" + behaviour.replace("-", "_"))(conn, seen)
            except OSError:
                seen.closed.set()  # the proxy closed the connection while we were sending
            else:
                if behaviour in ("hang", "idle", "endless", "switch-protocols"):
                    seen.closed.set()

    # -- behaviours (the value of the x-upstream request header)

    @staticmethod
    def _send_head(conn: socket.socket, status: bytes, headers: list[bytes]) -> None:
        conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n")

    def _ok(self, conn: socket.socket, seen: Seen) -> None:
        reply = orjson.dumps({**orjson.loads(JSON_REPLY), "target": seen.target.decode("latin-1")})
        self._send_head(
            conn,
            b"200 OK",
            [b"content-type: application/json", b"content-length: %d" % len(reply), b"connection: close"],
        )
        conn.sendall(reply)

    def _redirect(self, conn: socket.socket, seen: Seen) -> None:
        location = seen.headers.get(b"x-location", b"http://127.0.0.1:9/")
        self._send_head(
            conn,
            b"307 Temporary Redirect",
            [b"location: " + location, b"content-length: 0", b"connection: close"],
        )

    def _connection_listed(self, conn: socket.socket, seen: Seen) -> None:
        self._send_head(
            conn,
            b"200 OK",
            [
                b"content-type: application/json",
                b"content-length: %d" % len(JSON_REPLY),
                b"Connection: close, X-Upstream-Hop",
                b"X-Upstream-Hop: for the proxy only",
            ],
        )
        conn.sendall(JSON_REPLY)

    def _bad_head(self, conn: socket.socket, seen: Seen) -> None:
        # A head aiohttp reads but HTTP/1.1 does not allow the proxy to write: a control
        # byte in a value (x-bad: value), or a status outside 100-599.
        kind = seen.headers.get(b"x-bad", b"value")
        status = b"600 Odd" if kind == b"status" else b"200 OK"
        headers = [b"content-length: %d" % len(JSON_REPLY), b"connection: close"]
        if kind != b"status":
            headers.append(b"x-odd: a\x7fb" if kind == b"value" else b"x-odd: a\x01b")
        if kind == b"sse":
            headers = [b"content-type: text/event-stream", b"connection: close", b"x-odd: a\x01b"]
        if kind == b"gzip-coded":
            # A transfer coding nothing undoes on the way: relayed, the client would get gzip
            # bytes as its event stream, with no header saying so.
            headers = [b"content-type: text/event-stream", b"transfer-encoding: gzip, chunked"]
            self._send_head(conn, status, headers)
            coded = gzip.compress(START + END)
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(coded), coded))
            return
        self._send_head(conn, status, headers)
        conn.sendall(JSON_REPLY if kind != b"sse" else START + END)

    def _switch_protocols(self, conn: socket.socket, seen: Seen) -> None:
        self._send_head(conn, b"101 Switching Protocols", [b"Upgrade: websocket", b"Connection: Upgrade"])
        conn.sendall(b"\x81\x05hello")  # a websocket frame
        self._wait_for_close(conn)

    def _wait_for_close(self, conn: socket.socket) -> None:
        """Block until the proxy closes the connection (recv sees EOF or a reset)."""
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def _hang(self, conn: socket.socket, seen: Seen) -> None:
        self._wait_for_close(conn)

    def _close_early(self, conn: socket.socket, seen: Seen) -> None:
        pass  # closed without a byte of response

    def _truncated_json(self, conn: socket.socket, seen: Seen) -> None:
        self._send_head(
            conn, b"200 OK", [b"content-type: application/json", b"content-length: 100", b"connection: close"]
        )
        conn.sendall(JSON_REPLY[:20])

    def _sse_head(self, conn: socket.socket, extra: list[bytes] | None = None) -> None:
        self._send_head(
            conn,
            b"200 OK",
            [
                b"content-type: text/event-stream",
                b"transfer-encoding: chunked",
                b"connection: close",
                *(extra or []),
            ],
        )

    @staticmethod
    def _chunk(conn: socket.socket, data: bytes, seen: Seen) -> None:
        conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        seen.sent += len(data)

    def _sse_cut(self, conn: socket.socket, seen: Seen) -> None:
        self._sse_head(conn)
        self._chunk(conn, START, seen)
        self._chunk(conn, DELTA, seen)
        # closed without the terminating chunk

    def _idle(self, conn: socket.socket, seen: Seen) -> None:
        self._sse_head(conn)
        self._chunk(conn, START, seen)
        self._wait_for_close(conn)

    def _long_line(self, conn: socket.socket, seen: Seen) -> None:
        self._sse_head(conn)
        for piece in long_line_body():
            self._chunk(conn, piece, seen)
        conn.sendall(b"0\r\n\r\n")

    def _bomb(self, conn: socket.socket, seen: Seen) -> None:
        wire = bomb_body()  # built before the head: the strict proxy's idle timeout is 1 s
        self._sse_head(conn, [b"content-encoding: gzip"])
        for i in range(0, len(wire), 16384):
            self._chunk(conn, wire[i : i + 16384], seen)
        conn.sendall(b"0\r\n\r\n")

    def _endless(self, conn: socket.socket, seen: Seen) -> None:
        self._sse_head(conn)
        self._chunk(conn, START, seen)
        burst = DELTA * 200
        while not self.stop.is_set():
            self._chunk(conn, burst, seen)  # as fast as the proxy takes it, until it closes


def long_line_body() -> list[bytes]:
    """message_start, then a 1 MiB data line in 16 KiB pieces, then the end of the stream."""
    return [START, b"data: ", *([b"L" * 16384] * 64), b"\n\n", END]


_BOMB: list[bytes] = []


def bomb_body() -> bytes:
    """gzip of message_start and 64 MiB of small events (about 70 KB on the wire)."""
    if not _BOMB:
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        events = b"data: {}\n\n" * (64 * 1024 * 1024 // 10)
        _BOMB.append(z.compress(START + events + END) + z.flush())
    return _BOMB[0]


# -- the proxies ---------------------------------------------------------------------------------


@dataclass
class Proxy:
    port: int
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def metrics(self) -> str:
        status, _, body = exchange(
            self.port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert status == 200
        return body.decode()

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def requests(self, outcome: str) -> float:
        return self.metric("cachewatch_requests_total", outcome=outcome)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(upstream: RawUpstream, tmp: Path, name: str, args: list[str]) -> Proxy:
    port = free_port()
    stdout, stderr = tmp / f"{name}.out", tmp / f"{name}.err"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "cachewatch.cli", "proxy",
            "--upstream", f"http://127.0.0.1:{upstream.port}{BASE}",
            "--listen", f"127.0.0.1:{port}", "--breakpoints", "off", *args,
        ],
        stdout=stdout.open("wb"),
        stderr=stderr.open("wb"),
        env=env,
    )  # fmt: skip
    return Proxy(port, process, stdout, stderr)


def _up(proxy: Proxy) -> bool:
    if proxy.process.poll() is not None:
        raise AssertionError(f"the proxy exited: {proxy.stderr.read_text()}")
    try:
        return (
            exchange(proxy.port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")[0]
            == 200
        )
    except OSError:
        return False


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    server = RawUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxies(upstream: RawUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    tmp = tmp_path_factory.mktemp("hostile")
    running = {
        "strict": launch(upstream, tmp, "strict", STRICT_ARGS),
        "patient": launch(upstream, tmp, "patient", PATIENT_ARGS),
    }
    try:
        for proxy in running.values():
            assert wait_for(lambda proxy=proxy: _up(proxy), 30), "the proxy did not start"
        yield running
    finally:
        for proxy in running.values():
            proxy.process.terminate()
        for proxy in running.values():
            try:
                proxy.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.process.kill()
    for name, proxy in running.items():
        errors = proxy.stderr.read_text()
        assert "Traceback" not in errors, f"{name} printed a traceback:\n{errors}"


@pytest.fixture
def strict(proxies: dict[str, Proxy]) -> Iterator[Proxy]:
    yield proxies["strict"]
    assert_healthy(proxies["strict"])


@pytest.fixture
def patient(proxies: dict[str, Proxy]) -> Iterator[Proxy]:
    yield proxies["patient"]
    assert_healthy(proxies["patient"])


# -- raw clients ---------------------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while piece := sock.recv(65536):
            data += piece
    return data


def parse(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 "), raw[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def exchange(port: int, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send ``request`` (ending in ``Connection: close``); the status, headers and raw body."""
    with connect(port) as sock:
        sock.sendall(request)
        return parse(read_all(sock))


def post(
    target: bytes = b"/v1/messages",
    body: bytes = BODY,
    *,
    upstream: str = "ok",
    marker: bytes = b"",
    extra: bytes = b"",
) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-hostile\r\nanthropic-version: 2023-06-01\r\n"
        b"content-type: application/json\r\nx-upstream: %s\r\nx-marker: %s\r\n%sContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (target, upstream.encode(), marker or b"-", extra, len(body), body)
    )


def unchunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body's content, and whether it ended with its terminating chunk."""
    out, rest = b"", body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep or not size_line:
            return out, False
        size = int(size_line, 16)
        if size == 0:
            return out, True
        if len(rest) < size + 2:
            return out + rest[:size], False
        out, rest = out + rest[:size], rest[size + 2 :]
    return out, False


def assert_healthy(proxy: Proxy) -> None:
    """A normal request through the proxy and /metrics still answer."""
    status, _, body = exchange(proxy.port, post())
    assert status == 200, body
    assert orjson.loads(body)["target"] == BASE + "/v1/messages"
    assert "cachewatch_requests_total" in proxy.metrics()


_markers = iter(range(1, 1_000_000))


def marker() -> bytes:
    return b"m%d" % next(_markers)


# -- the request target -----------------------------------------------------------------------------

ESCAPES = [
    b"/../../etc/passwd",
    b"/%2e%2e/%2e%2e/etc/passwd",
    b"/%2E%2E/%2E%2E/etc/passwd",
    b"/..%2f..%2fetc/passwd",
    b"/..%2F..%2Fetc/passwd",
    b"/%252e%252e/%252e%252e/etc/passwd",
    b"/%25252e%25252e/etc/passwd",
    b"/.%2e/.%2e/etc/passwd",
    b"/v1/../../../etc/passwd",
    b"/..%5c..%5cetc/passwd",
    b"/..;/..;/etc/passwd",
    b"/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    b"/%u002e%u002e/etc/passwd",
    b"/..%2fother-api/v1/messages",
    b"/v1//..//..//..//etc/passwd",
    # Upstreams that cut at a NUL, trim spaces or normalise Unicode read these as "..".
    b"/..%00/..%00/etc/passwd",
    b"/..%20/..%20/etc/passwd",
    b"/%20..%09/%20..%09/etc/passwd",
    b"/%e2%80%a5/%e2%80%a5/etc/passwd",  # U+2025 TWO DOT LEADER
    b"/%e2%80%a4%e2%80%a4/etc/passwd",  # U+2024 ONE DOT LEADER, twice
    b"/%ef%b9%92%ef%b9%92/etc/passwd",  # U+FE52 SMALL FULL STOP, twice
    b"/..%e2%88%95..%e2%88%95etc/passwd",  # U+2215 DIVISION SLASH
    b"/..%u2215..%u2215etc/passwd",  # the same in IIS's %u form
    # An upstream that decodes the path and parses it again ends it at a "?" or "#".
    b"/..%3f/v1/messages",
    b"/..%23/v1/messages",
    b"/%2e%2e%3f/x",
    b"/v1/..%2f..%3f/x",
]


@pytest.mark.parametrize("target", ESCAPES, ids=[t.decode() for t in ESCAPES])
def test_dot_segments_leaving_the_base_path_are_refused(
    strict: Proxy, upstream: RawUpstream, target: bytes
) -> None:
    tag = marker()
    status, _, body = exchange(strict.port, post(target, marker=tag))
    assert status == 400, body
    assert b"base path" in body
    assert upstream.by_marker(tag) == []  # nothing reached the upstream


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/./messages",
        b"/v1/x/../messages",
        b"/v1/messages/%ff%2F%41",
        b"/v1/messages?q=%zz&b=..&c=%2e%2e",
        b"/v1/%2e/messages",
        b"/v1/a%2fb/..%2f..%2fc",  # climbs two of its three levels: still under the base
    ],
)
def test_the_target_is_forwarded_exactly_as_received(
    strict: Proxy, upstream: RawUpstream, target: bytes
) -> None:
    tag = marker()
    status, _, body = exchange(strict.port, post(target, marker=tag))
    assert status == 200, body
    (seen,) = upstream.by_marker(tag)
    assert seen.target == BASE.encode() + target  # byte for byte: never decoded, re-encoded or resolved


def test_http10_without_host_is_served(strict: Proxy, upstream: RawUpstream) -> None:
    status, _, body = exchange(strict.port, b"GET /v1/models HTTP/1.0\r\nx-marker: h10\r\n\r\n")
    assert status == 200, body
    assert upstream.by_marker(b"h10")[0].target == BASE.encode() + b"/v1/models"


def test_bad_bytes_in_the_target_are_refused(strict: Proxy, upstream: RawUpstream) -> None:
    tag = marker()
    status, _, body = exchange(strict.port, post(b"/v1/messages%00#frag", marker=tag))
    assert status == 400, body
    assert upstream.by_marker(tag) == []


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n",
        b"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"TRACE /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    ],
    ids=["connect-elsewhere", "connect-upstream", "options-asterisk", "trace"],
)
def test_tunnels_and_non_path_targets_are_refused(strict: Proxy, upstream: RawUpstream, head: bytes) -> None:
    # Never an open relay: no tunnel to anywhere (the upstream included), no asterisk-form.
    with upstream.lock:
        before = len(upstream.seen)
    request = head.replace(b"{port}", b"%d" % upstream.port) + b"Connection: close\r\n\r\n"
    status, _, body = exchange(strict.port, request)
    assert 400 <= status < 500, body
    with upstream.lock:
        assert len(upstream.seen) == before


def test_an_upstream_redirect_is_relayed_never_followed_with_the_credentials(
    strict: Proxy, upstream: RawUpstream
) -> None:
    elsewhere = RawUpstream()  # another origin
    try:
        location = b"http://127.0.0.1:%d/collect" % elsewhere.port
        status, headers, _ = exchange(
            strict.port,
            post(
                upstream="redirect",
                extra=b"authorization: Bearer sk-redirected\r\nx-location: %s\r\n" % location,
            ),
        )
        assert status == 307
        assert headers[b"location"] == location  # the client decides, with its own credentials
        time.sleep(0.2)
        assert elsewhere.seen == []
    finally:
        elsewhere.close()


# -- Upgrade: h2c (curl --http2) -------------------------------------------------------------------

UPGRADES = {  # Connection header, body sent after the head in a second write, chunked
    "h2c-one-write": (b"Upgrade, HTTP2-Settings", False, False),
    "h2c-body-later": (b"Upgrade, HTTP2-Settings", True, False),
    "h2c-chunked": (b"Upgrade, HTTP2-Settings", True, True),
    "upgrade-close": (b"Upgrade, close", True, False),
}


@pytest.mark.parametrize("case", list(UPGRADES))
def test_a_request_asking_for_an_upgrade_keeps_its_body(
    strict: Proxy, upstream: RawUpstream, case: str
) -> None:
    """llhttp ends a request with ``Connection: Upgrade`` at its head; the proxy reads its body.

    ``curl --http2`` on an http:// URL sends ``Upgrade: h2c``. The body must go upstream
    (not an empty POST), and body bytes arriving later must not be parsed as requests.
    """
    connection, later, chunked = UPGRADES[case]
    tag, hidden, after = marker(), marker(), marker()
    body = (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-marker: %s\r\nContent-Length: 0\r\n\r\n" % hidden
    )
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: %s\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nx-marker: %s\r\n%s\r\n\r\n" % (connection, tag, framing)
    )
    wire = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    keep_alive = b"close" not in connection
    if keep_alive:  # the connection goes on as HTTP/1.1: a next request is served
        wire += (
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nx-marker: %s\r\nConnection: close\r\n\r\n" % after
        )
    with connect(strict.port) as sock:
        if later:
            sock.sendall(head)
            time.sleep(0.2)  # most likely a second segment (not asserted)
            sock.sendall(wire)
        else:
            sock.sendall(head + wire)
        answer = read_all(sock)
    status, _, reply = parse(answer)
    assert status == 200, reply
    (seen,) = upstream.by_marker(tag)
    assert seen.body == body
    assert upstream.by_marker(hidden) == []  # the body was not parsed as a request
    if keep_alive:
        assert answer.count(b"HTTP/1.1 200 ") == 2
        assert len(upstream.by_marker(after)) == 1


# -- Connection: the fields it names are for one hop (RFC 9110 7.6.1) -----------------------------


def test_the_fields_a_clients_connection_header_names_are_not_forwarded(
    strict: Proxy, upstream: RawUpstream
) -> None:
    tag = marker()
    extra = b"Connection: keep-alive, X-Hop-One\r\nConnection: x-hop-two\r\nX-Hop-One: 1\r\nx-hop-two: 2\r\n"
    status, _, body = exchange(strict.port, post(marker=tag, extra=extra))
    assert status == 200, body
    (seen,) = upstream.by_marker(tag)
    assert b"x-hop-one" not in seen.headers
    assert b"x-hop-two" not in seen.headers
    assert seen.headers[b"x-api-key"] == b"sk-hostile"  # the others are forwarded


@pytest.mark.parametrize("second", [b"evil.example", b"127.0.0.1"])
def test_two_host_headers_get_400(strict: Proxy, upstream: RawUpstream, second: bytes) -> None:
    # RFC 9112 3.2: more than one Host is a 400 (the first was taken, whatever the second).
    tag = marker()
    status, _, body = exchange(strict.port, post(marker=tag, extra=b"Host: " + second + b"\r\n"))
    assert status == 400, body
    assert upstream.by_marker(tag) == []


def test_a_utf8_header_value_is_forwarded_exactly_beside_a_latin1_one(
    strict: Proxy, upstream: RawUpstream
) -> None:
    # One Latin-1 value made every value be decoded as Latin-1, so the UTF-8 one went
    # out double-encoded. (The Latin-1 one itself goes out as UTF-8: aiohttp writes text.)
    tag = marker()
    status, _, body = exchange(
        strict.port, post(marker=tag, extra=b"x-latin1: caf\xe9\r\nx-utf8: caf\xc3\xa9 \xe2\x82\xac\r\n")
    )
    assert status == 200, body
    (seen,) = upstream.by_marker(tag)
    assert seen.headers[b"x-utf8"] == b"caf\xc3\xa9 \xe2\x82\xac"


def test_the_fields_an_upstreams_connection_header_names_are_not_relayed(strict: Proxy) -> None:
    status, headers, body = exchange(strict.port, post(upstream="connection-listed"))
    assert status == 200, body
    assert b"x-upstream-hop" not in headers
    assert headers[b"content-type"] == b"application/json"
    assert body == JSON_REPLY


# -- broken upstreams ---------------------------------------------------------------------------------


def test_a_hung_upstream_gets_504_and_its_connection_is_released(
    strict: Proxy, upstream: RawUpstream
) -> None:
    before = strict.requests("transport_error")
    tag = marker()
    status, _, body = exchange(strict.port, post(upstream="hang", marker=tag))
    assert status == 504, body
    assert orjson.loads(body)["error"]["message"] == "upstream timed out"
    (seen,) = upstream.by_marker(tag)
    assert seen.closed.wait(WAIT)
    assert strict.requests("transport_error") == before + 1


def test_an_upstream_closing_before_its_headers_gets_502(strict: Proxy) -> None:
    status, _, body = exchange(strict.port, post(upstream="close-early"))
    assert status == 502, body
    assert "closed the connection" in orjson.loads(body)["error"]["message"]


def test_an_upstream_switching_protocols_unasked_gets_502(strict: Proxy, upstream: RawUpstream) -> None:
    # The proxy forwards no Upgrade: a 101 is an invalid answer, not one to relay with a body.
    before = strict.requests("transport_error")
    tag = marker()
    status, _, body = exchange(strict.port, post(upstream="switch-protocols", marker=tag))
    assert status == 502, body
    (seen,) = upstream.by_marker(tag)
    assert seen.closed.wait(WAIT)  # the upstream connection is not kept
    assert strict.requests("transport_error") == before + 1


@pytest.mark.parametrize("bad", ["value", "sse", "status", "gzip-coded"])
def test_an_upstream_head_http11_does_not_allow_gets_502(strict: Proxy, bad: str) -> None:
    # Relayed as it was, the server writing the head raised: a traceback, and the client
    # got its connection closed with nothing.
    status, _, body = exchange(
        strict.port, post(upstream="bad-head", extra=b"x-bad: " + bad.encode() + b"\r\n")
    )
    assert status == 502, body
    message = orjson.loads(body)["error"]["message"]
    assert ("transfer coding" if bad == "gzip-coded" else "response head") in message


def test_a_truncated_json_body_is_502_not_unreachable(strict: Proxy) -> None:
    before = strict.requests("transport_error")
    status, _, body = exchange(strict.port, post(upstream="truncated-json"))
    assert status == 502, body
    message = orjson.loads(body)["error"]["message"]
    assert message == "upstream closed the connection before its response was complete"
    assert strict.requests("transport_error") == before + 1


@pytest.mark.parametrize("behaviour", ["sse-cut", "idle"])
def test_an_upstream_failing_mid_stream_leaves_the_response_visibly_incomplete(
    strict: Proxy, upstream: RawUpstream, behaviour: str
) -> None:
    before = strict.requests("transport_error")
    before_input = strict.metric("cachewatch_tokens_total", type="input")
    tag = marker()
    status, headers, body = exchange(strict.port, post(body=STREAM_BODY, upstream=behaviour, marker=tag))
    assert status == 200
    assert headers[b"transfer-encoding"] == b"chunked"
    content, complete = unchunk(body)
    assert content.startswith(START)
    assert not complete  # no terminating chunk: the client knows the body was cut
    if behaviour == "idle":  # the proxy dropped the silent upstream
        assert upstream.by_marker(tag)[0].closed.wait(WAIT)
    assert wait_for(lambda: strict.requests("transport_error") == before + 1)
    # The usage seen before the failure is recorded.
    assert strict.metric("cachewatch_tokens_total", type="input") == before_input + 11


# -- slow and idle clients --------------------------------------------------------------------------


def test_a_slow_head_gets_408(strict: Proxy) -> None:
    with connect(strict.port) as sock:
        request = post()
        answer = b""
        for i in range(len(request)):
            try:
                sock.sendall(request[i : i + 1])
            except OSError:
                break
            time.sleep(0.2)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            sock.setblocking(True)
            if answer:
                break
        sock.settimeout(WAIT)
        answer += read_all(sock)
    assert parse(answer)[0] == 408


def test_an_idle_new_connection_is_closed_without_an_answer(strict: Proxy) -> None:
    with connect(strict.port) as sock:
        assert read_all(sock) == b""  # closed by the proxy within the bounded wait


def test_an_idle_kept_alive_connection_is_closed(strict: Proxy) -> None:
    with connect(strict.port) as sock:
        sock.sendall(post().replace(b"Connection: close\r\n", b""))
        answer = read_all(sock)  # the answer, then the close after the keep-alive timeout
    status, headers, body = parse(answer)
    assert status == 200
    assert len(body) == int(headers[b"content-length"])


def test_a_kept_alive_connection_fed_empty_lines_is_closed(strict: Proxy) -> None:
    # llhttp skips the empty lines between requests without starting one: each reset the
    # keep-alive timer and none started the head timeout, so a client sending one every
    # few tenths of a second held its connection forever (slowloris).
    with connect(strict.port) as sock:
        sock.sendall(post().replace(b"Connection: close\r\n", b""))
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        _, headers, body = parse(received)
        while len(body) < int(headers[b"content-length"]):
            body += sock.recv(65536)
        sock.settimeout(0.3)
        closed = False
        deadline = time.monotonic() + WAIT
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"\r\n")
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue  # still open: another empty line
            except OSError:
                closed = True
    assert closed


def test_a_client_leaving_its_stream_unread_is_dropped_and_the_upstream_released(
    strict: Proxy, upstream: RawUpstream
) -> None:
    # An endless stream to a client that reads nothing: past the send timeout the proxy
    # drops the client, and with it the upstream (it was held for as long as the client
    # stayed connected; a hundred such clients took every upstream connection).
    before = strict.requests("aborted")
    tag = marker()
    with connect(strict.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(post(body=STREAM_BODY, upstream="endless", marker=tag))
        assert wait_for(lambda: len(upstream.by_marker(tag)) == 1)
        (seen,) = upstream.by_marker(tag)
        assert seen.closed.wait(WAIT)  # while the client is still connected
    assert wait_for(lambda: strict.requests("aborted") == before + 1)


def test_a_stalled_body_gets_408(strict: Proxy, upstream: RawUpstream) -> None:
    tag = marker()
    request = post(marker=tag)
    with connect(strict.port) as sock:
        sock.sendall(request[:-10])  # the head and most of the body, then silence
        answer = read_all(sock)
    assert parse(answer)[0] == 408
    assert upstream.by_marker(tag) == []


def test_a_trickled_body_gets_408_at_the_request_timeout(strict: Proxy, upstream: RawUpstream) -> None:
    tag = marker()
    request = post(marker=tag)
    head_end = request.index(b"\r\n\r\n") + 4
    answer = b""
    with connect(strict.port) as sock:
        sock.sendall(request[:head_end])
        sock.settimeout(0.4)  # one byte every 0.4 s: never idle for the 1 s body timeout
        for i in range(head_end, len(request)):
            try:
                sock.sendall(request[i : i + 1])
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        sock.settimeout(WAIT)
        answer += read_all(sock)
    assert parse(answer)[0] == 408
    assert upstream.by_marker(tag) == []


# -- limits ----------------------------------------------------------------------------------------


def test_too_many_headers_get_431(strict: Proxy, upstream: RawUpstream) -> None:
    tag = marker()
    flood = b"".join(b"x-flood-%d: v\r\n" % i for i in range(60))
    status, _, body = exchange(strict.port, post(marker=tag, extra=flood))
    assert status == 431, body
    assert upstream.by_marker(tag) == []


def test_a_head_over_the_size_limit_gets_431_before_it_ends(strict: Proxy) -> None:
    with connect(strict.port) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-big: ")
        with contextlib.suppress(OSError):
            for _ in range(64):  # an unfinished header value, far over 8 KiB
                sock.sendall(b"v" * 1024)
        answer = read_all(sock)
    assert parse(answer)[0] == 431


def test_a_large_body_with_a_small_head_in_one_write_is_not_mistaken_for_a_big_head(strict: Proxy) -> None:
    body = orjson.dumps(
        {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "x" * 40_000}]}
    )
    status, _, reply = exchange(strict.port, post(body=body))
    assert status == 200, reply


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_an_oversized_body_gets_413(strict: Proxy, upstream: RawUpstream, chunked: bool) -> None:
    tag = marker()
    body = b"x" * 100_000
    if chunked:
        request = (
            b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-marker: %s\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
            % tag
            + b"".join(b"%x\r\n%s\r\n" % (4096, body[i : i + 4096]) for i in range(0, 98304, 4096))
            + b"0\r\n\r\n"
        )
    else:
        request = post(body=body, marker=tag)
    with connect(strict.port) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        answer = read_all(sock)
    assert parse(answer)[0] == 413
    assert upstream.by_marker(tag) == []


def chunked_post(tag: bytes, trailer: bytes) -> bytes:
    return (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-marker: %s\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n%s" % (tag, len(BODY), BODY, trailer)
    )


GZ = gzip.compress(BODY)


@pytest.mark.parametrize(
    "coding", [b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"]
)
def test_a_transfer_coding_other_than_chunked_gets_501(
    strict: Proxy, upstream: RawUpstream, coding: bytes
) -> None:
    # llhttp takes the chunked coding off and leaves the gzip one: forwarded, the body
    # would have reached the upstream still gzip-coded, as if that were its content.
    tag = marker()
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-marker: %s\r\n%s\r\nConnection: close\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (tag, coding, len(GZ), GZ)
    )
    status, _, body = exchange(strict.port, request)
    assert status == 501, body
    assert upstream.by_marker(tag) == []


def test_trailer_fields_are_not_merged_into_the_headers(strict: Proxy, upstream: RawUpstream) -> None:
    # Sent in one write, the trailer is parsed before the app reads the headers.
    tag = marker()
    status, _, body = exchange(
        strict.port, chunked_post(tag, b"x-trailer: late\r\nx-api-key: sk-other\r\n\r\n")
    )
    assert status == 200, body
    (seen,) = upstream.by_marker(tag)
    assert seen.body == BODY
    assert b"x-trailer" not in seen.headers
    assert b"x-api-key" not in seen.headers


def test_a_trailer_field_over_the_head_limit_gets_431(strict: Proxy, upstream: RawUpstream) -> None:
    # httptools holds a field whole until it ends: unbounded, it took memory for as long
    # as the body timeout let the client send.
    tag = marker()
    with connect(strict.port) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(chunked_post(tag, b"x-trailer: "))
            for _ in range(64):  # 1 MiB of one value, far over 8 KiB
                sock.sendall(b"v" * 16384)
        answer = read_all(sock)
    assert parse(answer)[0] == 431
    assert upstream.by_marker(tag) == []


def test_pipelined_heads_before_a_body_are_not_counted_as_trailer_bytes(
    strict: Proxy, upstream: RawUpstream
) -> None:
    # Bytes received inside a body without body data are bounded like a head; heads of
    # earlier requests read in the same piece are not part of that body.
    first, tag = marker(), marker()
    heads = b"".join(
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nx-pad: %s\r\n\r\n" % (b"p" * 6000) for _ in range(4)
    )
    head = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-marker: %s\r\n%s\r\n\r\n"
    with connect(strict.port) as sock:  # each write most likely one piece (not asserted)
        sock.sendall(head % (first, b"Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (len(BODY), BODY))
        time.sleep(0.2)
        # The end of the first body, four heads and the head of a request whose body follows.
        sock.sendall(b"0\r\n\r\n" + heads + head % (tag, b"Content-Length: %d" % len(BODY)))
        time.sleep(0.2)
        sock.sendall(BODY)
        answer = read_all(sock)
    assert answer.count(b"HTTP/1.1 200 ") == 6, answer[:300]
    (seen,) = upstream.by_marker(tag)
    assert seen.body == BODY


# -- observation caps: every byte relayed, the cap counted ------------------------------------------


def test_a_long_sse_line_is_relayed_unchanged_and_counted(strict: Proxy) -> None:
    before = strict.metric("cachewatch_observation_truncated_total", reason="sse_line")
    before_ok = strict.requests("ok")
    status, _, body = exchange(strict.port, post(body=STREAM_BODY, upstream="long-line"))
    assert status == 200
    content, complete = unchunk(body)
    assert complete
    assert hashlib.sha256(content).digest() == hashlib.sha256(b"".join(long_line_body())).digest()
    assert wait_for(lambda: strict.requests("ok") == before_ok + 1)
    assert strict.metric("cachewatch_observation_truncated_total", reason="sse_line") == before + 1


def test_a_compression_bomb_is_relayed_unchanged_and_counted(strict: Proxy) -> None:
    before = strict.metric("cachewatch_observation_truncated_total", reason="decoded_bytes")
    # Compressed here, before the request: built by the upstream on a loaded machine, it
    # could outlast the strict proxy's 1 s wait for the response headers (a 504).
    bomb_body()
    status, headers, body = exchange(strict.port, post(body=STREAM_BODY, upstream="bomb"))
    assert status == 200
    assert headers[b"content-encoding"] == b"gzip"
    content, complete = unchunk(body)
    assert complete
    assert content == bomb_body()  # still compressed, byte for byte
    assert gzip.decompress(content).startswith(START)
    assert wait_for(
        lambda: strict.metric("cachewatch_observation_truncated_total", reason="decoded_bytes") == before + 1
    )


# -- the client leaving, at each stage --------------------------------------------------------------


def test_a_client_leaving_before_the_headers_releases_the_upstream(
    patient: Proxy, upstream: RawUpstream
) -> None:
    before = patient.requests("aborted")
    tags = [marker() for _ in range(3)]
    for tag in tags:
        with connect(patient.port) as sock:
            sock.sendall(post(upstream="hang", marker=tag))
            assert wait_for(lambda tag=tag: bool(upstream.by_marker(tag)))
        # Gone: the proxy must drop its upstream connection now, not at its 60 s timeout.
    for tag in tags:
        assert upstream.by_marker(tag)[0].closed.wait(WAIT)
    assert wait_for(lambda: patient.requests("aborted") == before + len(tags))


def test_a_client_leaving_a_fast_stream_stops_the_upstream_read(
    patient: Proxy, upstream: RawUpstream
) -> None:
    before = patient.requests("aborted")
    before_input = patient.metric("cachewatch_tokens_total", type="input")
    tag = marker()
    with connect(patient.port) as sock:
        sock.sendall(post(body=STREAM_BODY, upstream="endless", marker=tag))
        received = b""
        while len(received) < 256 * 1024:
            received += sock.recv(65536)
    (seen,) = upstream.by_marker(tag)
    assert seen.closed.wait(WAIT)  # the upstream stream was closed, not drained
    assert wait_for(lambda: patient.requests("aborted") == before + 1)
    # Counted with the usage seen so far (message_start's input tokens).
    assert patient.metric("cachewatch_tokens_total", type="input") == before_input + 11


@pytest.mark.parametrize("stage", ["mid-head", "mid-body", "after-request"])
def test_a_client_leaving_early_leaves_the_proxy_healthy(
    patient: Proxy, upstream: RawUpstream, stage: str
) -> None:
    tag = marker()
    request = post(marker=tag)
    cut = {"mid-head": 40, "mid-body": len(request) - 10, "after-request": len(request)}[stage]
    with connect(patient.port) as sock:
        sock.sendall(request[:cut])
        if stage == "after-request":
            assert wait_for(lambda: bool(upstream.by_marker(tag)))
    if stage != "after-request":
        time.sleep(0.2)
        assert upstream.by_marker(tag) == []


def test_no_traceback_so_far(proxies: dict[str, Proxy]) -> None:
    for name, proxy in proxies.items():
        errors = proxy.stderr.read_text()
        assert "Traceback" not in errors, f"{name}:\n{errors}"
        assert "Exception in ASGI application" not in errors, f"{name}:\n{errors}"
        # A response cut on purpose (an upstream failing mid-body) is not an app error.
        assert "ASGI callable returned" not in errors, f"{name}:\n{errors}"
