"""Soak: ``cachewatch proxy`` under sustained mixed good and hostile load; RSS and open fds.

Not a test (nothing here is timed against a bar): it reports whether memory and file
descriptors stay flat. It starts a small raw-socket upstream (answers, SSE streams,
hung, cut, silent, endless, long lines, a gzip bomb) and ``cachewatch proxy`` as a
subprocess with short timeouts, then runs client threads for ``--seconds``, each picking
a scenario from a weighted mix: JSON and SSE calls, clients leaving mid-stream and
before the headers, hung and half-closing upstreams, traversal attempts, header floods,
oversized bodies, slow and idle clients, long SSE lines, compression bombs. The proxy's
RSS and open file descriptors are read from ``/proc`` (Linux) after a warm-up, at the
end of the load, and after the timeouts and keep-alives have had time to expire.

    python benchmarks/proxy_soak.py [--seconds 60] [--clients 16]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable

import orjson

BASE = "/apps/anthropic"
START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_s","model":"claude-x",'
    b'"usage":{"input_tokens":11,"output_tokens":1}}}\n\n'
)
DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n'
END = (
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":5}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
JSON_REPLY = orjson.dumps(
    {"id": "msg_ok", "type": "message", "model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 2}}
)
_z = zlib.compressobj(9, zlib.DEFLATED, 31)
BOMB = _z.compress(START + b"data: {}\n\n" * (16 * 1024 * 1024 // 10) + END) + _z.flush()
LONG_LINE = [START, b"data: ", *([b"L" * 16384] * 32), b"\n\n", END]
PROXY_ARGS = [
    "--upstream-headers-timeout", "1", "--upstream-idle-timeout", "1",
    "--client-head-timeout", "1", "--client-body-timeout", "1", "--client-request-timeout", "3",
    "--keep-alive-timeout", "1", "--max-head-bytes", "8192", "--max-headers", "50", "--max-body", "65536",
    "--max-event-bytes", "65536", "--max-decoded-bytes", "1048576", "--breakpoints", "auto",
]  # fmt: skip


# -- the upstream ------------------------------------------------------------------------------


class Upstream:
    """One request per connection; the ``x-upstream`` request header picks the behaviour."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stop.is_set():
                conn, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            while len(body) < int(headers.get(b"content-length", b"0")):
                piece = conn.recv(65536)
                if not piece:
                    return
                body += piece
            behaviour = headers.get(b"x-upstream", b"ok")
            if behaviour == b"ok":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n%s" % (len(JSON_REPLY), JSON_REPLY)
                )
            elif behaviour == b"hang":
                while conn.recv(65536):
                    pass
            elif behaviour == b"truncated":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n"
                    b"connection: close\r\n\r\n" + JSON_REPLY[:20]
                )
            else:
                extra = b"content-encoding: gzip\r\n" if behaviour == b"bomb" else b""
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                    b"connection: close\r\n%s\r\n" % extra
                )
                pieces = {
                    b"sse": [START, DELTA, DELTA, END],
                    b"cut": [START, DELTA],
                    b"idle": [START],
                    b"long": LONG_LINE,
                    b"bomb": [BOMB[i : i + 16384] for i in range(0, len(BOMB), 16384)],
                }.get(behaviour)
                if behaviour == b"endless":
                    while not self.stop.is_set():
                        conn.sendall(b"%x\r\n%s\r\n" % (len(DELTA) * 100, DELTA * 100))
                    return
                for piece in pieces or []:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                if behaviour == b"idle":
                    while conn.recv(65536):
                        pass
                elif behaviour != b"cut":
                    conn.sendall(b"0\r\n\r\n")


# -- clients -----------------------------------------------------------------------------------


def request(
    target: bytes = b"/v1/messages", upstream: bytes = b"ok", body: bytes | None = None, extra: bytes = b""
) -> bytes:
    body = body if body is not None else b'{"model":"claude-x","max_tokens":8,"stream":true,"messages":[]}'
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-soak\r\nanthropic-version: 2023-06-01\r\n"
        b"content-type: application/json\r\nx-upstream: %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (target, upstream, extra, len(body), body)
    )


def drain(sock: socket.socket, limit: int | None = None) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while piece := sock.recv(65536):
            data += piece
            if limit is not None and len(data) >= limit:
                break
    return data


def status_of(data: bytes) -> str:
    return data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "none"


def scenario(port: int, name: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        if name == "slow_head":
            head = request()
            with contextlib.suppress(OSError):  # the proxy answers 408 and closes mid-way
                for i in range(0, 40, 4):
                    sock.sendall(head[i : i + 4])
                    time.sleep(0.2)
            return status_of(drain(sock))
        if name == "idle_client":
            return status_of(drain(sock))
        if name == "leave_mid_stream":
            sock.sendall(request(upstream=b"endless"))
            drain(sock, limit=128 * 1024)
            return "left"
        if name == "leave_before_headers":
            sock.sendall(request(upstream=b"hang"))
            time.sleep(0.05)
            return "left"
        if name == "stalled_body":
            sock.sendall(request()[:-5])
            return status_of(drain(sock))
        payload = {
            "json": request(upstream=b"ok"),
            "sse": request(upstream=b"sse"),
            "hung_upstream": request(upstream=b"hang"),
            "cut_stream": request(upstream=b"cut"),
            "idle_upstream": request(upstream=b"idle"),
            "truncated_json": request(upstream=b"truncated"),
            "long_line": request(upstream=b"long"),
            "bomb": request(upstream=b"bomb"),
            "traversal": request(target=b"/..%2f..%2fetc/passwd"),
            "header_flood": request(extra=b"".join(b"x-f%d: v\r\n" % i for i in range(80))),
            "oversized": request(body=b"x" * 100_000),
        }[name]
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        return status_of(drain(sock))


MIX = {
    "json": 40, "sse": 20, "leave_mid_stream": 4, "leave_before_headers": 4, "hung_upstream": 2,
    "cut_stream": 3, "idle_upstream": 2, "truncated_json": 3, "long_line": 2, "bomb": 1, "traversal": 4,
    "header_flood": 3, "oversized": 3, "slow_head": 2, "idle_client": 1, "stalled_body": 2,
}  # fmt: skip


# -- measuring ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def snapshot(pid: int) -> tuple[int, int]:
    return rss_kib(pid), open_fds(pid)


def run_load(port: int, seconds: float, clients: int) -> collections.Counter[tuple[str, str]]:
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    lock = threading.Lock()
    names, weights = zip(*MIX.items(), strict=True)
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            name = rng.choices(names, weights)[0]
            try:
                result = scenario(port, name)
            except OSError as exc:
                result = f"client {type(exc).__name__}"
            with lock:
                outcomes[(name, result)] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def wait_up(port: int, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not check():
            raise RuntimeError("the proxy exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            if drain(sock).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise RuntimeError("the proxy did not start")


def metrics_text(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return drain(sock).partition(b"\r\n\r\n")[2].decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads (default 16)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds to wait after the load (default 5)"
    )
    args = parser.parse_args()

    upstream = Upstream()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryFile() as log, tempfile.TemporaryFile() as errors:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "cachewatch.cli", "proxy", "--upstream",
             f"http://127.0.0.1:{upstream.port}{BASE}", "--listen", f"127.0.0.1:{port}", *PROXY_ARGS],
            stdout=log, stderr=errors, env=env,
        )  # fmt: skip
        try:
            wait_up(port, lambda: proxy.poll() is None)
            run_load(port, min(5.0, args.seconds / 6), args.clients)  # warm-up: caches, pools, allocator
            time.sleep(args.settle)
            before = snapshot(proxy.pid)
            started = time.monotonic()
            outcomes = run_load(port, args.seconds, args.clients)
            elapsed = time.monotonic() - started
            after_load = snapshot(proxy.pid)
            time.sleep(args.settle)
            settled = snapshot(proxy.pid)
            text = metrics_text(port)
        finally:
            proxy.send_signal(signal.SIGINT)
            try:
                proxy.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proxy.kill()
            upstream.stop.set()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")

    total = sum(outcomes.values())
    print(f"proxy soak: {args.clients} clients, {elapsed:.0f} s, {total} scenarios ({total / elapsed:.0f}/s)")
    for (name, result), count in sorted(outcomes.items()):
        print(f"  {name:<22} {result:<24} {count:7d}")
    print(f"{'':24}{'RSS MiB':>10} {'open fds':>9}")
    for label, (rss, fds) in (
        ("before (after warm-up)", before),
        ("end of load", after_load),
        ("settled", settled),
    ):
        print(f"  {label:<22}{rss / 1024:10.1f} {fds:9d}")
    print(
        f"  RSS growth {(settled[0] - before[0]) / 1024:+.1f} MiB, fds {settled[1] - before[1]:+d} (before -> settled)"
    )
    for line in text.splitlines():
        if line.startswith(("cachewatch_requests_total", "cachewatch_observation_truncated_total")):
            print("  " + line)
    tracebacks = stderr.count("Traceback")
    print(f"  tracebacks on the proxy's stderr: {tracebacks}")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
