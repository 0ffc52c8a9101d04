"""Power-limit sweeps: set a limit on each GPU, benchmark, sample power draw,
temperature and clocks, and always put the original limits back.

NVIDIA is driven through `nvidia-smi`, AMD through `amd-smi`, on this machine or
over SSH (the host's `ssh:` field in cluster.yaml). Every limit is checked
against the card's min/max before anything is touched.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import HydraError


class PowerError(HydraError):
    """A power limit cannot be read, set or restored."""


def ssh_destination(spec: str) -> tuple[str, str | None]:
    """'ssh://user@host:port', 'user@host:port' or 'user@host' -> (user@host, port)."""
    from ..inventory.safe_values import ssh_target

    m = re.fullmatch(r"(?:ssh://)?(?P<dest>[^:/]+)(?::(?P<port>\d+))?/?", spec)
    try:
        if not m:
            raise ValueError
        ssh_target(spec.rstrip("/"))  # no options smuggled in as a host ("-oProxyCommand=...")
    except ValueError:
        raise PowerError(f"ssh target {spec!r} is not user@host[:port]", "write it like ssh://root@10.0.0.2:22") from None
    return m["dest"], m["port"]


def ssh_argv(spec: str, remote_command: str, connect_timeout_s: float = 5) -> list[str]:
    """ssh in batch mode (never a password prompt); HYDRA_SSH_CONFIG picks an ssh config file."""
    dest, port = ssh_destination(spec)
    config = os.environ.get("HYDRA_SSH_CONFIG")
    return ["ssh", *(["-F", config] if config else []), "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, int(connect_timeout_s))}", *(["-p", port] if port else []),
            "--", dest, remote_command]


@dataclass(frozen=True)
class Target:
    """Where a GPU's tools run: locally, or through ssh."""

    host: str
    ssh: str | None = None

    def argv(self, argv: list[str]) -> list[str]:
        if not self.ssh:
            return argv
        return ssh_argv(self.ssh, shlex.join(argv))

    def run(self, argv: list[str]) -> str:
        try:
            r = subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise PowerError(f"{argv[0]} not found on {self.host}", "install the GPU driver tools there") from None
        except subprocess.TimeoutExpired:
            raise PowerError(f"{argv[0]} on {self.host} did not answer in 30 s", "check the host and its driver") from None
        if r.returncode != 0:
            text = (r.stderr or r.stdout).strip().splitlines()
            detail = text[-1] if text else f"exit {r.returncode}"
            if "permission" in detail.lower() or "root" in detail.lower():
                raise PowerError(f"{argv[0]} on {self.host}: {detail}",
                                 "setting power limits needs root: run the sweep as root (or via sudo)")
            raise PowerError(f"{' '.join(argv[:3])} on {self.host} failed: {detail}", "check the GPU index and driver")
        return r.stdout


@dataclass(frozen=True)
class Limits:
    current_w: float
    min_w: float
    max_w: float


@dataclass
class Sampler:
    """Runs the vendor tool's sampling loop in the background and keeps its lines."""

    proc: subprocess.Popen
    parse: Callable[[str], tuple[float, float, float] | None]
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> Sampler:
        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                s = self.parse(line)
                if s:
                    self.samples.append(s)

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> list[tuple[float, float, float]]:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.thread:
            self.thread.join(5)
        return self.samples


class Gpu:
    vendor = ""

    def __init__(self, target: Target, index: int) -> None:
        self.target, self.index = target, index

    @property
    def label(self) -> str:
        return f"{self.target.host}:{self.index}"

    def read(self) -> Limits:
        raise NotImplementedError

    def set(self, watts: float) -> None:
        raise NotImplementedError

    def sampler(self) -> Sampler:
        raise NotImplementedError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.strip().split(",")]
    except ValueError:
        raise PowerError(f"unexpected nvidia-smi output {text.strip()[:60]!r}", "update the NVIDIA driver") from None


class NvidiaGpu(Gpu):
    vendor = "nvidia"

    def read(self) -> Limits:
        out = self.target.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=power.limit,power.min_limit,"
                               "power.max_limit", "--format=csv,noheader,nounits"])
        cur, lo, hi = _floats(out.splitlines()[0])[:3]
        return Limits(cur, lo, hi)

    def set(self, watts: float) -> None:
        self.target.run(["nvidia-smi", "-i", str(self.index), "-pl", f"{watts:g}"])

    def sampler(self) -> Sampler:
        argv = self.target.argv(["nvidia-smi", "-i", str(self.index), "--query-gpu=power.draw,temperature.gpu,"
                                 "clocks.sm", "--format=csv,noheader,nounits", "-lms", "500"])

        def parse(line: str) -> tuple[float, float, float] | None:
            try:
                w, t, c = (float(x) for x in line.strip().split(",")[:3])
                return w, t, c
            except ValueError:
                return None

        return Sampler(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True),
                       parse).start()


def find_number(obj: object, *keys: str) -> float | None:
    """First numeric value under any of keys, anywhere in amd-smi's JSON (its layout moves between releases)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys:
                v = v.get("value") if isinstance(v, dict) else v
                try:
                    return float(str(v).split()[0])
                except (TypeError, ValueError):
                    pass
        for v in obj.values():
            found = find_number(v, *keys)
            if found is not None:
                return found
    if isinstance(obj, list):
        for v in obj:
            found = find_number(v, *keys)
            if found is not None:
                return found
    return None


class AmdGpu(Gpu):
    vendor = "amd"

    def _json(self, argv: list[str]) -> object:
        try:
            return json.loads(self.target.run(argv))
        except json.JSONDecodeError:
            raise PowerError(f"amd-smi on {self.target.host} printed no JSON", "update ROCm (amd-smi >= 6.1)") from None

    def read(self) -> Limits:
        data = self._json(["amd-smi", "static", "-g", str(self.index), "--limit", "--json"])
        cur = find_number(data, "power_cap", "socket_power_limit")
        lo = find_number(data, "min_power_cap", "min_power_limit")
        hi = find_number(data, "max_power_cap", "max_power_limit")
        if cur is None or lo is None or hi is None:
            raise PowerError(f"amd-smi on {self.target.host} did not report power caps for GPU {self.index}",
                             "update ROCm (amd-smi >= 6.1)")
        return Limits(cur, lo, hi)

    def set(self, watts: float) -> None:
        self.target.run(["amd-smi", "set", "-g", str(self.index), "--power-cap", f"{watts:g}"])

    def sampler(self) -> Sampler:
        argv = self.target.argv(["amd-smi", "monitor", "-g", str(self.index), "-p", "-t", "-c", "-w", "1", "--json"])

        def parse(line: str) -> tuple[float, float, float] | None:
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                return None
            w = find_number(data, "power", "socket_power")
            t = find_number(data, "hotspot_temperature", "edge_temperature", "temperature")
            c = find_number(data, "gfx_clk", "sclk")
            return (w, t or 0.0, c or 0.0) if w is not None else None

        return Sampler(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True),
                       parse).start()


@dataclass(frozen=True)
class SweepRow:
    gpu: str
    limit_w: float
    tg_tokens_per_s: float
    avg_power_w: float | None
    peak_power_w: float | None
    tokens_per_joule: float | None  # tok/s per W
    max_temp_c: float | None
    avg_sm_clock_mhz: float | None


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM takes the same path as Ctrl-C, so the finally block restores limits."""

    def handler(signum, frame):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def restore(gpus: list[Gpu], originals: dict[str, Limits]) -> list[str]:
    """Puts every original limit back and reads it back; returns the GPUs that did not take it."""
    failed = []
    for g in gpus:
        want = originals[g.label].current_w
        try:
            if abs(g.read().current_w - want) <= 1.0:
                continue  # never changed (or already back): nothing to set
            g.set(want)
            if abs(g.read().current_w - want) > 1.0:
                failed.append(g.label)
        except PowerError:
            failed.append(g.label)
    return failed


def sweep(gpus: list[Gpu], limits: list[float], benchmark: Callable[[], float], settle_s: float = 3.0,
          on_step: Callable[[str], None] | None = None) -> list[SweepRow]:
    """Runs benchmark() at every limit on every GPU (all GPUs share the limit of a step)."""
    originals = {g.label: g.read() for g in gpus}
    for g in gpus:
        lim = originals[g.label]
        bad = [w for w in limits if not lim.min_w <= w <= lim.max_w]
        if bad:
            raise PowerError(f"{g.label}: {bad[0]:g} W is outside the card's range {lim.min_w:g}-{lim.max_w:g} W",
                             "choose --limits inside that range")
    rows: list[SweepRow] = []
    with _sigterm_as_interrupt():
        try:
            for watts in limits:
                for g in gpus:
                    g.set(watts)
                if on_step:
                    on_step(f"limit {watts:g} W")
                time.sleep(settle_s)
                samplers = {g.label: g.sampler() for g in gpus}
                try:
                    tps = benchmark()
                finally:
                    samples = {label: s.stop() for label, s in samplers.items()}
                for g in gpus:
                    s = samples[g.label]
                    power = [x[0] for x in s]
                    avg = statistics.mean(power) if power else None
                    rows.append(SweepRow(
                        gpu=g.label, limit_w=watts, tg_tokens_per_s=round(tps, 2),
                        avg_power_w=round(avg, 1) if avg else None,
                        peak_power_w=max(power) if power else None,
                        tokens_per_joule=round(tps / avg, 4) if avg else None,
                        max_temp_c=max(x[1] for x in s) if s else None,
                        avg_sm_clock_mhz=round(statistics.mean(x[2] for x in s), 0) if s else None))
        finally:
            failed = restore(gpus, originals)
            if failed:
                raise PowerError(f"could not restore the power limit of {', '.join(failed)}",
                                 "set it by hand: " + "; ".join(
                                     f"{g.label} -> {originals[g.label].current_w:g} W" for g in gpus))
    return rows
