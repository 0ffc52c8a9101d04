"""HTTP to servers we do not trust to behave (bench, status, power sweeps point at any URL):
a total deadline per request (not only per read: a server that trickles a byte a second
still ends), caps on body and line sizes counted after decompression (a gzip bomb stops at
the cap), JSON depth errors caught. Whatever a server sends, the caller gets data or a
BenchError with one line.
"""

from __future__ import annotations

import json
import time
from typing import Iterator

import httpx

from ..errors import BenchError

MAX_BODY = 4 << 20  # a JSON answer (/v1/models, /slots) or an error body
MAX_METRICS = 1 << 20
MAX_LINE = 1 << 20  # one server-sent event
MAX_ERROR_TEXT = 300


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, url: str) -> None:
        if self.left() <= 0:
            raise BenchError(f"{url} did not finish within {self.seconds:g} s", "raise --timeout, or check the server")

    def timeout(self) -> httpx.Timeout:
        """httpx's per-operation timeout, never past the deadline."""
        return httpx.Timeout(max(0.05, min(self.left(), 30.0)))


def chunks(response: httpx.Response, deadline: Deadline, url: str) -> Iterator[bytes]:
    """The decoded body in chunks, checking the deadline between reads."""
    for chunk in response.iter_bytes():
        deadline.check(url)
        yield chunk


def read_body(response: httpx.Response, deadline: Deadline, url: str, limit: int = MAX_BODY) -> bytes:
    data = bytearray()
    for chunk in chunks(response, deadline, url):
        data += chunk
        if len(data) > limit:
            raise BenchError(f"{url} sent more than {limit // 1024} KiB", "point --url at a llama-server")
    return bytes(data)


def lines(response: httpx.Response, deadline: Deadline, url: str, limit: int = MAX_LINE) -> Iterator[str]:
    """Text lines of a streamed body; a line longer than limit is an error, not memory."""
    pending = bytearray()
    for chunk in chunks(response, deadline, url):
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                break
            yield pending[:end].rstrip(b"\r").decode("utf-8", "replace")
            del pending[:end + 1]
        if len(pending) > limit:
            raise BenchError(f"{url} streamed a line longer than {limit // 1024} KiB", "point --url at a llama-server")
    if pending:
        yield pending.decode("utf-8", "replace")


def parse_json(data: bytes, url: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise BenchError(f"{url} answered something that is not JSON", "point --url at a llama-server") from None


def get(client: httpx.Client, path: str, seconds: float, limit: int = MAX_BODY) -> tuple[int, bytes]:
    """(status, body) of a GET within a total deadline and a body cap."""
    deadline = Deadline(seconds)
    url = f"{str(client.base_url).rstrip('/')}{path}"
    with client.stream("GET", path, timeout=deadline.timeout()) as response:
        return response.status_code, read_body(response, deadline, url, limit)


def error_text(response: httpx.Response, deadline: Deadline, url: str) -> str:
    """The start of an error body, for a one-line message (shown escaped by present.py)."""
    try:
        return read_body(response, deadline, url, 64 * 1024)[:MAX_ERROR_TEXT].decode("utf-8", "replace")
    except BenchError:
        return ""
