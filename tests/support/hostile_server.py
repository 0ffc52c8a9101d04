"""A loopback HTTP server whose every path answers the way a test tells it to (slowly, hugely,
compressed, garbled), and which records the headers each request came with."""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Answer = Callable[[BaseHTTPRequestHandler], None]


def send(status: int, body: bytes, headers: dict | None = None) -> Answer:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return answer


def send_json(data: object, status: int = 200) -> Answer:
    return send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


def trickle(byte: bytes = b" ", every_s: float = 0.3, total_s: float = 120) -> Answer:
    """A 200 whose body never ends: one byte every every_s seconds."""
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        end = time.monotonic() + total_s
        try:
            while time.monotonic() < end:
                h.wfile.write(byte)
                h.wfile.flush()
                time.sleep(every_s)
        except OSError:
            pass
    return answer


def gzip_bomb(size: int = 256 << 20) -> Answer:
    """A small compressed body that inflates to size bytes of '['."""
    blob = gzip.compress(b"[" * size, compresslevel=9)
    return send(200, blob, {"Content-Encoding": "gzip", "Content-Type": "application/json"})


def stream_tokens_forever(every_s: float = 0.01) -> Answer:
    """SSE tokens that never stop (a server ignoring max_tokens)."""
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        try:
            i = 0
            while True:
                h.wfile.write(f'data: {{"choices": [{{"delta": {{"content": "t{i}"}}}}]}}\n\n'.encode())
                h.wfile.flush()
                i += 1
                time.sleep(every_s)
        except OSError:
            pass
    return answer


class HostileServer:
    def __init__(self, routes: dict[str, Answer]) -> None:
        self.routes, self.headers = routes, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def _serve(self) -> None:
                outer.headers.append((self.command, self.path, dict(self.headers)))
                if self.command == "POST" and self.headers.get("Content-Length"):
                    self.rfile.read(int(self.headers["Content-Length"]))
                route = outer.routes.get(self.path.split("?")[0])
                (route or send(404, b"{}"))(self)

            do_GET = do_POST = _serve  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def authorizations(self) -> list[str]:
        return [h.get("Authorization") for _, _, h in self.headers if h.get("Authorization")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
