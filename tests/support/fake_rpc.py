"""A TCP server that answers ggml-rpc's HELLO with a chosen protocol version (another llama.cpp
release, as far as a client can tell), or with garbage. For the protocol-check tests."""

from __future__ import annotations

import socket
import struct
import threading


class FakeRpc:
    def __init__(self, version: tuple[int, int, int] = (6, 1, 0), garbage: bool = False) -> None:
        self.version, self.garbage = version, garbage
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(64)
                    if self.garbage:
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    else:
                        conn.sendall(struct.pack("<Q", 28) + bytes(self.version) + bytes(25))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
