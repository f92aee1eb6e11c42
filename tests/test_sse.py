"""SSEDecoder: WHATWG line splitting (CR, LF, CRLF only), fields, comments, chunking."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachewatch.observing._sse import SSEDecoder, SSEEvent


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.flush()


def test_basic_event_and_name() -> None:
    assert decode(b"event: message_start\ndata: {}\n\n") == [SSEEvent("message_start", "{}")]
    assert decode(b"data: x\n\n") == [SSEEvent(None, "x")]


def test_line_endings_cr_lf_crlf() -> None:
    for sep in (b"\n", b"\r", b"\r\n"):
        body = b"event: a" + sep + b"data: 1" + sep + sep + b"data: 2" + sep + sep
        assert decode(body) == [SSEEvent("a", "1"), SSEEvent(None, "2")], sep


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    # A CR ending one chunk and an LF starting the next must not make an empty line
    # (which would dispatch early and lose the event name of the following event).
    assert decode(b"event: a\r", b"\ndata: 1\r", b"\n\r", b"\n") == [SSEEvent("a", "1")]


def test_one_leading_byte_order_mark_is_ignored() -> None:
    # WHATWG: "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are
    # present." Without that the first line is an unknown field and its data is lost.
    bom = "\ufeff".encode()
    body = b"data: 1\n\nevent: a\ndata: 2\n\n"
    want = [SSEEvent(None, "1"), SSEEvent("a", "2")]
    assert decode(bom + body) == want
    assert decode(*[bytes([b]) for b in bom + body]) == want  # the mark split byte by byte
    assert decode(bom[:2], bom[2:] + body) == want
    # Only one, and only at the very start of the stream.
    assert decode(bom + bom + body) == want[1:]  # the second makes "\ufeffdata" an unknown field
    assert decode(b"data: x" + bom + b"\n\n") == [SSEEvent(None, "x\ufeff")]
    decoder = SSEDecoder()
    assert decoder.feed(bom[:1]) == []
    assert not decoder.idle  # part of a mark is held


def test_only_cr_lf_split_lines() -> None:
    # U+2028, VT, FF, NEL are data, not line ends (str.splitlines would split on them).
    text = "a\u2028b\x0bc\x0cd\x85e"
    assert decode(b"data: " + text.encode() + b"\n\n") == [SSEEvent(None, text)]


def test_utf8_split_inside_character() -> None:
    body = "data: héllo 🌍\n\n".encode()
    assert decode(*[body[i : i + 1] for i in range(len(body))]) == [SSEEvent(None, "héllo 🌍")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode(b"data: \xff\xfe\n\n") == [SSEEvent(None, "\ufffd\ufffd")]


def test_comments_ids_retry_unknown_fields_ignored() -> None:
    body = b": OPENROUTER PROCESSING\n\nid: 7\nretry: 10\nfoo: bar\ndata: x\n\n"
    assert decode(body) == [SSEEvent(None, "x")]


def test_multiline_data_joined_with_lf() -> None:
    assert decode(b"data: a\ndata:b\ndata\n\n") == [SSEEvent(None, "a\nb\n")]


def test_only_one_space_stripped() -> None:
    assert decode(b"data:  two\n\n") == [SSEEvent(None, " two")]
    assert decode(b"data: \n\n") == [SSEEvent(None, "")]


def test_event_without_data_not_dispatched_and_name_reset() -> None:
    assert decode(b"event: a\n\ndata: x\n\n") == [SSEEvent(None, "x")]


def test_final_event_without_blank_line_dispatched_at_flush() -> None:
    assert decode(b"data: 1\n\ndata: [DONE]") == [SSEEvent(None, "1"), SSEEvent(None, "[DONE]")]
    assert decode(b"data: [DONE]\n") == [SSEEvent(None, "[DONE]")]
    assert decode(b"data: [DONE]\r") == [SSEEvent(None, "[DONE]")]


def test_pending_does_not_change_state() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: e\ndata: 1") == []
    assert decoder.pending() == [SSEEvent("e", "1")]
    assert decoder.feed(b"2\n\n") == [SSEEvent("e", "12")]
    assert decoder.pending() == []


@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    body = (
        b'event: message_start\r\ndata: {"a": "\xc3\xa9"}\r\n\r\n: ping\r\r'
        b"data: x\rdata: y\r\rdata: {}\n\nevent: last\ndata: end"
    )
    cuts = sorted(data.draw(st.sets(st.integers(1, len(body) - 1), max_size=20)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=False)]
    assert (
        decode(*chunks)
        == decode(body)
        == [
            SSEEvent("message_start", '{"a": "é"}'),
            SSEEvent(None, "x\ny"),
            SSEEvent(None, "{}"),
            SSEEvent("last", "end"),
        ]
    )
