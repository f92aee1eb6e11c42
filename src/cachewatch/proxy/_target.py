"""Confinement: the proxy forwards only to its upstream, only under its base path.

The checks on what a client asks for, before anything is forwarded: the method, the
bytes of the request target, dot segments in any encoding that would climb above the
upstream's base path, and the ``Host`` the request was sent to (the proxy is never an
open relay). The request target itself is forwarded exactly as received.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

__all__ = ["ALLOW", "METHODS", "bad_target_bytes", "host_allowed", "leaves_base"]

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"})
ALLOW = b", ".join(sorted(m.encode() for m in METHODS))
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})

#: What the dot-segment check reads as a dot or a separator once percent-decoding is
#: undone: overlong UTF-8 and IIS ``%u`` forms, full-width dot and solidus, the dots and
#: slash Unicode normalisation (NFKC) folds to ``.``, ``..`` and ``/``, backslash.
_DOT_FORMS = (
    b"\xc0\xae",
    b"\xe0\x80\xae",
    b"\xef\xbc\x8e",  # U+FF0E FULLWIDTH FULL STOP
    b"\xe2\x80\xa4",  # U+2024 ONE DOT LEADER
    b"\xef\xb9\x92",  # U+FE52 SMALL FULL STOP
    b"%u002e",
)
_DOTS_FORMS = (b"\xe2\x80\xa5",)  # U+2025 TWO DOT LEADER
_SLASH_FORMS = (
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xef\xbc\x8f",
    b"\xe2\x88\x95",  # U+2215 DIVISION SLASH
    b"%u002f",
    b"%u005c",
    b"%u2215",
    b"\\",
)
#: Cut or trimmed off a segment by some servers: what follows ``;`` (parameters), a NUL,
#: and a decoded ``?`` or ``#`` (a server that decodes the path and parses it again ends the
#: path there), and white space.
_SEGMENT_ENDS = (b";", b"\x00", b"?", b"#")
_TRIMMED = b" \t\r\n\x0b\x0c"


def leaves_base(raw_path: bytes) -> bool:
    """Whether ``raw_path``'s dot segments, in any encoding, climb above its first segment.

    Percent-encoding is undone up to three times (double and triple encoding), then the
    overlong, ``%u``, full-width and NFKC-folding forms of ``.`` and ``/`` and the backslash
    are read as such; ``;params`` after a segment, what follows a NUL or a decoded ``?`` or
    ``#``, and surrounding white space are ignored (``..;x``, ``..%00``, ``..%3f`` and
    ``..%20`` are ``..`` to some servers), and
    empty segments do not count as depth (some servers merge slashes).
    """
    path = raw_path
    if b"%" not in path and b"." not in path and b"\\" not in path:
        return False  # the common case: no dot can be hidden in it
    lowered = path.lower()
    for _ in range(3):
        if b"%" not in lowered:
            break
        decoded = unquote_to_bytes(lowered).lower()
        if decoded == lowered:
            break
        lowered = decoded
    for form in _DOT_FORMS:
        lowered = lowered.replace(form, b".")
    for form in _DOTS_FORMS:
        lowered = lowered.replace(form, b"..")
    for form in _SLASH_FORMS:
        lowered = lowered.replace(form, b"/")
    depth = 0
    for segment in lowered.split(b"/"):
        for cut in _SEGMENT_ENDS:
            segment = segment.partition(cut)[0]
        segment = segment.strip(_TRIMMED)
        if segment == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif segment and segment != b".":
            depth += 1
    return False


def bad_target_bytes(target: bytes) -> bool:
    """Bytes no origin-form request target may hold: controls, space, non-ASCII, ``#``."""
    return not target.isascii() or b"#" in target or any(b <= 0x20 or b == 0x7F for b in target)


def host_allowed(host_header: bytes, extra: frozenset[str]) -> bool:
    """Whether a request's ``Host`` names the proxy itself: a loopback name or one of ``extra``."""
    host = host_header.decode("latin-1").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in LOOPBACK_NAMES or host in extra or name in extra
