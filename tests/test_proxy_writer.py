"""The proxy's response writer after the protocol itself closed the connection.

:class:`TargetCheckingHttpToolsProtocol` closes a connection on its own account (a
431 or 408 refusal, a client that leaves its response unread) while the request's app
may still be writing its response in the same event-loop step, before uvicorn has
learnt that the connection is lost. Under uvloop, writing to a closed transport raises,
and the response's task died with a traceback ("Exception in ASGI application"). The
writer drops such writes, as asyncio's own transports do.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from cachewatch.proxy._protocol import _OneTickWriter

uvloop = pytest.importorskip("uvloop")


async def closed_transport() -> asyncio.Transport:
    ours, theirs = socket.socketpair()
    theirs.close()
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
    transport.close()
    await asyncio.sleep(0)  # uvloop closes the handle: a write now raises
    with pytest.raises(RuntimeError):
        transport.write(b"x")
    return transport


async def writes_after_close() -> None:
    transport = await closed_transport()
    writer = _OneTickWriter(transport, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")  # the head, held
    writer.write(b"{}")  # the body, in the same step
    writer.write(b"more")
    await asyncio.sleep(0)  # a held head's flush
    writer.close()
    assert writer.is_closing()


def test_writes_after_the_protocol_closed_the_connection_are_dropped() -> None:
    uvloop.run(writes_after_close())
