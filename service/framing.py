"""Incremental HTTP/1.1 request framing: where does one request end, before anything is parsed?

The buffering worker (service/http_worker.py) reads each request in its event loop and hands it to a thread
only once every byte has arrived, so it must know the framing first: the header block up to its blank line,
then a Content-Length body or a chunked one (RFC 9112, sections 6 and 7). Limits are checked as bytes arrive,
whatever the framing; anything ambiguous (both lengths, repeated lengths that differ, folded headers, a coding
other than chunked) is refused here rather than guessed, so this code and gunicorn's parser can never disagree
on where a request ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
MAX_TRAILER_BYTES = 8192
_DIGITS = re.compile(rb"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSIONS = {b"HTTP/1.0": (1, 0), b"HTTP/1.1": (1, 1)}


class FramingError(Exception):
    """A request whose framing or size is refused; `status` and `detail` become the problem+json answer."""

    def __init__(self, status: int, detail: str, **extensions: object):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extensions = extensions
        self.request_id: str | None = None
        self.target: bytes | None = None  # the request target, once the request line is read


@dataclass(frozen=True)
class Head:
    """What framing needs from a header block."""

    size: int  # bytes of the request line and headers, blank line included
    target: bytes  # path and query, as sent: a refusal answers in the form of the API it was meant for
    request_id: str | None
    version: tuple[int, int]
    content_length: int | None
    chunked: bool
    expect_continue: bool


def parse_head(block: bytes, max_body_bytes: int) -> Head:
    """The request line and header fields of `block` (ending in CRLF CRLF) -> Head, or FramingError."""
    lines = block[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise FramingError(400, "malformed request line; expected 'METHOD TARGET HTTP/1.1'")
    try:
        return _head(lines, parts, len(block), max_body_bytes)
    except FramingError as exc:
        exc.target = parts[1]  # so the refusal answers in the form of the API the request was meant for
        raise


def _head(lines: list[bytes], parts: list[bytes], size: int, max_body_bytes: int) -> Head:
    version = _VERSIONS.get(parts[2])
    if version is None:
        raise FramingError(400, f"HTTP version {_show(parts[2])} is not served; use HTTP/1.1 or HTTP/1.0")
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if b"\n" in line or b"\r" in line or b"\0" in line:
            raise FramingError(400, "a bare CR, LF or NUL in the header fields")
        if not colon or not _TOKEN.fullmatch(name):
            raise FramingError(400, f"malformed header line {_show(line)}")  # folding and spaces before ':' too
        fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
    request_id = fields.get(b"x-request-id", [b""])[0].decode("latin-1") or None
    try:
        return _framed(fields, version, size, parts[1], request_id, max_body_bytes)
    except FramingError as exc:
        exc.request_id = request_id  # so the refusal echoes it, as the app's answers do
        raise


def _framed(
    fields: dict[bytes, list[bytes]],
    version: tuple[int, int],
    size: int,
    target: bytes,
    request_id: str | None,
    max_body_bytes: int,
) -> Head:
    content_length = _content_length(fields.get(b"content-length", []))
    chunked = _chunked(fields.get(b"transfer-encoding"), version)
    if chunked and content_length is not None:
        raise FramingError(400, "both Content-Length and Transfer-Encoding are given; send one")
    if content_length is not None and content_length > max_body_bytes:
        raise _too_large(f"Content-Length {content_length}", max_body_bytes)
    expect_continue = _expects_continue(fields.get(b"expect", []), version)
    return Head(size, target, request_id, version, content_length, chunked, expect_continue)


def _content_length(values: list[bytes]) -> int | None:
    if not values:
        return None
    if any(not _DIGITS.fullmatch(value) for value in values) or len(set(values)) > 1:
        raise FramingError(400, "Content-Length must be one non-negative decimal integer")
    return int(values[0])


def _chunked(values: list[bytes] | None, version: tuple[int, int]) -> bool:
    if values is None:
        return False
    codings = [coding.strip(b" \t").lower() for coding in b",".join(values).split(b",")]
    if codings != [b"chunked"] or version < (1, 1):
        raise FramingError(400, f"Transfer-Encoding {_show(b', '.join(values))} is not accepted; send "
                                "Content-Length or 'Transfer-Encoding: chunked' (HTTP/1.1)")  # fmt: skip
    return True


def _expects_continue(values: list[bytes], version: tuple[int, int]) -> bool:
    for value in values:
        if value.lower() != b"100-continue":
            raise FramingError(417, f"Expect {_show(value)} cannot be met; only 100-continue is understood")
    return bool(values) and version >= (1, 1)  # RFC 9110 10.1.1: ignored in HTTP/1.0


def _too_large(what: str, limit: int) -> FramingError:
    return FramingError(413, f"{what} is larger than the body limit of {limit} bytes", limit=limit)


def _show(raw: bytes, most: int = 60) -> str:
    text = raw[:most].decode("latin-1")
    return repr(text + ("…" if len(raw) > most else ""))


class RequestFramer:
    """Feed a connection's bytes in as they arrive; `done` once one whole request is in.

    `feed` returns how many of the given bytes belong to this request: the rest (a pipelined next request)
    is the caller's to keep. Only the header block and the current chunk-size line are held here.
    """

    def __init__(self, max_head_bytes: int, max_body_bytes: int):
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.head: Head | None = None
        self.received = 0  # bytes of this request so far, framing included
        self.body_bytes = 0  # decoded body bytes so far
        self.done = False
        self._held = bytearray()  # the header block, a chunk-size line or trailer lines until complete
        self._state = "head"
        self._remaining = 0  # bytes left of a Content-Length body or of the current chunk's data

    def feed(self, data: bytes) -> int:
        used = 0
        while used < len(data) and not self.done:
            used += getattr(self, f"_feed_{self._state}")(memoryview(data)[used:])
        self.received += used
        return used

    def _feed_head(self, data: memoryview) -> int:
        start = max(0, len(self._held) - 3)  # the blank line may straddle two reads
        self._held += data
        end = self._held.find(b"\r\n\r\n", start)
        size = end + 4 if end >= 0 else len(self._held)  # the head, or what has come of it so far
        if size > self.max_head_bytes:
            error = FramingError(431, f"request line and headers exceed {self.max_head_bytes} bytes",
                                 limit=self.max_head_bytes)  # fmt: skip
            line, ended, _ = bytes(self._held[: self.max_head_bytes]).partition(b"\r\n")
            parts = line.split(b" ")
            error.target = parts[1] if ended and len(parts) == 3 else None
            raise error
        if end < 0:
            return len(data)
        used = len(data) - (len(self._held) - size)
        self.head = parse_head(bytes(self._held[:size]), self.max_body_bytes)
        self._held.clear()
        if self.head.chunked:
            self._state = "chunk_line"
        elif self.head.content_length:
            self._state, self._remaining = "length", self.head.content_length
        else:
            self.done = True
        return used

    def _feed_length(self, data: memoryview) -> int:
        used = min(self._remaining, len(data))
        self._remaining -= used
        self.body_bytes += used
        self.done = self._remaining == 0
        return used

    def _feed_chunk_line(self, data: memoryview) -> int:
        line, used = self._line(data, MAX_CHUNK_LINE, "a chunk-size line")
        if line is None:
            return used
        size_field = line.split(b";", 1)[0]
        if not _HEX.fullmatch(size_field):
            raise FramingError(400, f"malformed chunk size {_show(size_field)}; expected hexadecimal digits")
        size = int(size_field, 16)
        if self.body_bytes + size > self.max_body_bytes:
            raise _too_large("the chunked body", self.max_body_bytes)
        self._state, self._remaining = ("chunk_data", size) if size else ("trailers", 0)
        return used

    def _feed_chunk_data(self, data: memoryview) -> int:
        used = min(self._remaining, len(data))
        self._remaining -= used
        self.body_bytes += used
        if self._remaining == 0:
            self._state = "chunk_end"
        return used

    def _feed_chunk_end(self, data: memoryview) -> int:
        line, used = self._line(data, 2, "the end of a chunk")
        if line is not None:
            if line:
                raise FramingError(400, "chunk data is longer than its chunk size")
            self._state = "chunk_line"
        return used

    def _feed_trailers(self, data: memoryview) -> int:
        line, used = self._line(data, MAX_TRAILER_BYTES, "the trailer fields")
        if line is not None:
            self._remaining += len(line) + 2
            if self._remaining > MAX_TRAILER_BYTES:
                raise FramingError(431, f"trailer fields exceed {MAX_TRAILER_BYTES} bytes", limit=MAX_TRAILER_BYTES)
            self.done = not line
        return used

    def _line(self, data: memoryview, most: int, what: str) -> tuple[bytes | None, int]:
        """(a CRLF-ended line without its CRLF, bytes of `data` used), or (None, bytes used) while incomplete."""
        before = len(self._held)
        self._held += data[: max(0, most + 2 - before)]
        end = self._held.find(b"\r\n", max(0, before - 1))  # the CRLF may straddle two reads
        if end < 0:
            if len(self._held) >= most + 2:
                raise FramingError(400, f"{what} is not ended by CRLF within {most} bytes")
            return None, len(data)
        line = bytes(self._held[:end])
        self._held.clear()
        if b"\r" in line or b"\n" in line:
            raise FramingError(400, f"a bare CR or LF in {what}")
        return line, end + 2 - before
