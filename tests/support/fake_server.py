"""A stand-in llama-server for unit tests of the benchmark plumbing: streams SSE chunks
with llama-server's `timings`, at a speed that follows a stand-in GPU's power limit."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeLlama:
    def __init__(self, state: Path | None = None, fail_after: int | None = None, delay_s: float = 0.0) -> None:
        self.state, self.fail_after, self.delay_s, self.requests = state, fail_after, delay_s, 0
        self.require_key: str | None = None  # like llama-server --api-key: everything but /health needs it
        self.authorized = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def _denied(self) -> bool:
                if outer.require_key is None or self.path == "/health":
                    return False
                if self.headers.get("Authorization") == f"Bearer {outer.require_key}":
                    outer.authorized += 1
                    return False
                self.send_response(401)
                self.end_headers()
                return True

            def do_GET(self):  # noqa: N802
                if self._denied():
                    return
                pages = {"/health": b'{"status": "ok"}', "/v1/models": b'{"data": [{"id": "smollm2"}]}',
                         "/slots": b'[{"id": 0, "is_processing": false}]',
                         "/metrics": b"llamacpp:predicted_tokens_seconds 42.5\n"}
                page = pages.get(self.path)
                self.send_response(200 if page else 404)
                self.end_headers()
                self.wfile.write(page or b"")

            def do_POST(self):  # noqa: N802
                if self._denied():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                if outer.fail_after is not None and outer.requests > outer.fail_after:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "boom"}')
                    return
                limit = 200.0
                if outer.state:
                    limit = json.loads(outer.state.read_text())["gpus"]["0"]["limit"]
                tps = 20 + limit / 10
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                n = body["max_tokens"]
                time.sleep(outer.delay_s)
                for i in range(n):
                    time.sleep(1 / tps)
                    chunk = {"choices": [{"delta": {"content": f"t{i} "}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                final = {"choices": [], "usage": {"completion_tokens": n},
                         "timings": {"predicted_n": n, "predicted_per_second": tps, "prompt_per_second": 500.0}}
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
