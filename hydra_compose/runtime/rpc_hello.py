"""Asking a ggml-rpc-server which RPC protocol it speaks (its HELLO command), with no llama.cpp
binary: a few bytes over TCP. A master and workers of different protocols fail the handshake or
crash the master, so up refuses them and status shows each worker's version.

Request (protocol 7): command byte 14, u64 payload size 24, 24 zero bytes (transport caps: none,
so the link stays plain TCP). Reply: u64 size, then major, minor, patch (and padding, caps).
Servers before protocol 7 take an empty payload and reply with 3 bytes: tried second.
A worker serves one client at a time; one that is busy with the master never answers, which
is reported as busy (its accept queue holds us until it is free; the workers ignore SIGPIPE).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

HELLO = 14
CAPS_SIZE = 24
MAX_REPLY = 256
# The protocol each llama.cpp release we pin speaks (ggml/include/ggml-rpc.h).
PROTOCOL_OF_REF = {"b11434": (7, 0, 0)}


@dataclass(frozen=True)
class Hello:
    endpoint: str
    state: str  # "ok" | "refused" | "busy" | "garbled"
    version: tuple[int, int, int] | None = None

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version)) if self.version else self.state


def _ask(host: str, port: int, payload: int, timeout_s: float) -> tuple[int, int, int] | str:
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except socket.timeout:
        return "busy"
    except OSError:
        return "refused"
    with sock:
        try:
            sock.sendall(struct.pack("<BQ", HELLO, payload) + bytes(payload))
            head = _read(sock, 8)
            if head is None:
                return "garbled"
            (size,) = struct.unpack("<Q", head)
            if not 3 <= size <= MAX_REPLY:
                return "garbled"
            body = _read(sock, size)
        except socket.timeout:
            return "busy"
        except OSError:
            return "garbled"
    if body is None:
        return "garbled"
    return body[0], body[1], body[2]


def _read(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def hello(host: str, port: int, timeout_s: float = 2.0) -> Hello:
    endpoint = f"{host}:{port}"
    answer = _ask(host, port, CAPS_SIZE, timeout_s)
    if answer == "garbled":  # an older server expects an empty HELLO
        answer = _ask(host, port, 0, timeout_s)
    if isinstance(answer, tuple):
        return Hello(endpoint, "ok", answer)
    return Hello(endpoint, answer)
