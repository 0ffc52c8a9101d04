"""Measuring a link the way llama.cpp uses it: over a worker's own RPC port, with no extra server
on the worker host. One connection: HELLO, then DEVICE_COUNT (an empty request, a 4-byte answer)
many times — its median is the round-trip time a token pays per trip; then a buffer of a few MiB
on the worker's first device, written (SET_TENSOR, then one round trip to know it arrived) and
read back (GET_TENSOR) — the throughput each way, the faster of two transfers (one transfer can
lose its window to a dropped packet or a busy machine and read a quarter low; the link's rate is
what the better one reached). The buffer is freed at the end.

Only an idle worker can be measured: a worker serving llama-server accepts nobody else (calibrate
stops the master for the moment it takes). Structures: ggml-rpc.cpp, protocol 7 (packed).
"""

from __future__ import annotations

import socket
import statistics
import struct
import time
from dataclasses import dataclass

from ..errors import ClusterError
from .rpc_hello import CAPS_SIZE, HELLO

ALLOC_BUFFER, BUFFER_GET_BASE, FREE_BUFFER, SET_TENSOR, GET_TENSOR, DEVICE_COUNT = 0, 3, 4, 6, 8, 15
GGML_TYPE_F32 = 0
TRANSFERS = 2  # each way, the faster one kept
TENSOR = struct.Struct("<QIQ4I4II16iI10QQQQ64si")  # rpc_tensor, 296 bytes
assert TENSOR.size == 296


@dataclass(frozen=True)
class LinkFigures:
    rtt_s: float  # median request/response time of an empty RPC command
    up_bytes_s: float  # master -> worker
    down_bytes_s: float  # worker -> master
    devices: int


class _Conn:
    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.endpoint = f"{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise ClusterError(f"cannot reach the worker {self.endpoint}: {exc.strerror or exc}",
                               "start the workers first (hydra-compose up), then calibrate") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as llama.cpp does

    def send(self, cmd: int, payload: bytes) -> None:
        self.sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)

    def recv(self, size: int) -> bytes:
        head = self._read(8)
        (n,) = struct.unpack("<Q", head)
        if n != size:
            raise ClusterError(f"{self.endpoint} answered {n} bytes where {size} were expected",
                               "is this a ggml-rpc-server of the cluster's llama.cpp?")
        return self._read(n)

    def _read(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(min(n - len(data), 1 << 20))
            if not chunk:
                raise ClusterError(f"{self.endpoint} closed the connection", "check the worker's log")
            data += chunk
        return bytes(data)

    def call(self, cmd: int, payload: bytes, answer: int) -> bytes:
        self.send(cmd, payload)
        return self.recv(answer)


def _tensor(buffer: int, data: int, size: int) -> bytes:
    n = size // 4
    return TENSOR.pack(1, GGML_TYPE_F32, buffer, n, 1, 1, 1, 4, size, size, size, 0, *([0] * 16), 0,
                       *([0] * 10), 0, 0, data, b"hydra-link-probe", 0)


def measure_link(host: str, port: int, pings: int = 30, size: int = 4 << 20, timeout_s: float = 10) -> LinkFigures:
    """Round-trip time and throughput to an idle worker (see the module's docstring)."""
    conn = _Conn(host, port, timeout_s)
    try:
        try:
            conn.send(HELLO, bytes(CAPS_SIZE))
            conn.recv(4 + CAPS_SIZE)
        except (socket.timeout, ClusterError):
            raise ClusterError(f"the worker {conn.endpoint} is busy (serving the master) or not a protocol-7 "
                               "ggml-rpc-server", "stop the master (hydra-compose down HOST) and calibrate again") from None
        times = []
        devices = 0
        for _ in range(pings):
            start = time.perf_counter()
            (devices,) = struct.unpack("<I", conn.call(DEVICE_COUNT, b"", 4))
            times.append(time.perf_counter() - start)
        rtt = statistics.median(times)
        remote, _ = struct.unpack("<QQ", conn.call(ALLOC_BUFFER, struct.pack("<IQ", 0, size), 16))
        if not remote:
            raise ClusterError(f"the worker {conn.endpoint} could not allocate {size >> 20} MiB",
                               "free memory on its device and calibrate again")
        try:
            (base,) = struct.unpack("<Q", conn.call(BUFFER_GET_BASE, struct.pack("<Q", remote), 8))
            tensor = _tensor(remote, base, size)
            payload = tensor + b"\0" + struct.pack("<Q", 0) + bytes(size)  # no cache flag: a plain write
            up = down = 0.0
            for _ in range(TRANSFERS):
                start = time.perf_counter()
                conn.send(SET_TENSOR, payload)  # one-way: the next answer says it arrived
                conn.call(DEVICE_COUNT, b"", 4)
                up = max(up, size / max(1e-9, time.perf_counter() - start - rtt))
                start = time.perf_counter()
                conn.call(GET_TENSOR, tensor + struct.pack("<QQ", 0, size), size)
                down = max(down, size / max(1e-9, time.perf_counter() - start - rtt))
        finally:
            conn.send(FREE_BUFFER, struct.pack("<Q", remote))
        return LinkFigures(rtt, up, down, devices)
    except OSError as exc:
        raise ClusterError(f"the link to {conn.endpoint} failed: {exc.strerror or exc}", "check the worker") from None
    finally:
        conn.sock.close()
