"""Run native llama.cpp binaries on loopback: RPC workers plus one llama-server.

Used by the accuracy tests and the benchmarks to compare plans with what
llama.cpp really does. Processes are tracked by the PIDs started here and
stopped by those PIDs only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class LoopbackCluster:
    bin_dir: Path
    work: Path
    workers: list[tuple[str, int, Proc]] = field(default_factory=list)
    server: Proc | None = None

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        log = self.work / f"{name}.log"
        fh = log.open("wb")
        env = dict(os.environ, LLAMA_CACHE=str(self.work / "cache"))
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        fh.close()
        return Proc(popen, log)

    def start_worker(self, threads: int = 1, host: str = "127.0.0.1") -> str:
        port = free_port(host)
        proc = self._spawn(f"worker-{port}", [str(self.bin_dir / "ggml-rpc-server"), "-H", host,
                                              "-p", str(port), "-t", str(threads)])
        wait_port(host, port)
        self.workers.append((host, port, proc))
        return f"{host}:{port}"

    @property
    def endpoints(self) -> list[str]:
        return [f"{h}:{p}" for h, p, _ in self.workers]

    def start_server(self, model: Path, args: list[str], port: int | None = None,
                     timeout: float = 120.0) -> str:
        port = port or free_port()
        argv = [str(self.bin_dir / "llama-server"), "-m", str(model), "--host", "127.0.0.1",
                "--port", str(port), *args]
        self.server = self._spawn(f"server-{port}", argv)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.popen.poll() is not None:
                raise RuntimeError(f"llama-server exited {self.server.popen.returncode}:\n{self.server.text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"llama-server not healthy after {timeout:.0f} s:\n{self.server.text()[-3000:]}")

    def stop_server(self) -> str:
        """Stops llama-server and returns its whole log."""
        assert self.server is not None
        self.server.stop()
        text = self.server.text()
        self.server = None
        return text

    def close(self) -> None:
        if self.server:
            self.server.stop()
        for _, _, proc in self.workers:
            proc.stop()


@contextmanager
def loopback_cluster(bin_dir: Path, work: Path) -> Iterator[LoopbackCluster]:
    work.mkdir(parents=True, exist_ok=True)
    cluster = LoopbackCluster(bin_dir, work)
    try:
        yield cluster
    finally:
        cluster.close()
