"""Headless Chromium (Debian's package) driven over the DevTools protocol: enough of a browser
to load a page, click, type, read the text on screen and take a screenshot. Started and stopped
by PID; its profile lives in the test's directory."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from .localrun import free_port


class Browser:
    def __init__(self, work: Path, width: int = 1280, height: int = 900) -> None:
        import websocket  # websocket-client: the DevTools protocol is JSON over a WebSocket

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise FileNotFoundError("chromium")
        port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        self.log = (work / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             f"--remote-debugging-port={port}", f"--user-data-dir={work / 'profile'}",
             f"--window-size={width},{height}", "about:blank"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        pages: list = []
        while time.monotonic() < deadline and not pages:
            try:
                pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                         if t.get("type") == "page"]
            except httpx.HTTPError:
                time.sleep(0.3)
        if not pages:
            self.close()
            raise TimeoutError("chromium's DevTools endpoint did not answer")
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: object) -> dict:
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> object:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", 60)

    def wait_for(self, expression: str, timeout_s: float) -> object:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"not within {timeout_s} s: {expression}\n--- page text:\n{self.text()[-2000:]}")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def click_text(self, tag: str, text: str) -> None:
        found = self.evaluate(f"""(() => {{ const el = [...document.querySelectorAll({json.dumps(tag)})]
            .find(e => e.innerText.trim().includes({json.dumps(text)}));
            if (!el) return false; el.click(); return true; }})()""")
        if not found:
            raise LookupError(f"no {tag} with text {text!r} on the page")

    def type_into(self, selector: str, text: str, enter: bool = True) -> None:
        """Focuses the element and types as a user does (input events), then Enter."""
        if not self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                             "if (!e) return false; e.focus(); return true; })()"):
            raise LookupError(f"nothing matches {selector}")
        self.call("Input.insertText", text=text)
        if enter:
            for kind in ("keyDown", "keyUp"):
                self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                          windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
