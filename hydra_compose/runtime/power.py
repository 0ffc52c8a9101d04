"""Power-limit sweeps: set a limit on each GPU, benchmark, sample power draw,
temperature and clocks, and always put the original limits back.

Each vendor record's PowerControl drives its tool (nvidia-smi, amd-smi) on this
machine or over SSH (the host's `ssh:` field in cluster.yaml). Every limit is
checked against the card's min/max before anything is touched.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import PowerError
from ..vendors.base import Limits, PowerControl, Sample
from .signals import held


@dataclass
class Sampler:
    """Runs the vendor tool's sampling loop in the background and keeps its lines."""

    proc: subprocess.Popen
    parse: Callable[[str], Sample | None]
    samples: list[Sample] = field(default_factory=list)
    thread: threading.Thread | None = None

    @classmethod
    def of(cls, gpu: PowerControl) -> Sampler:
        proc = subprocess.Popen(gpu.target.argv(gpu.sampler_argv()), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        return cls(proc, gpu.parse_sample).start()

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

    def stop(self) -> list[Sample]:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.thread:
            self.thread.join(5)
        return self.samples


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


@dataclass
class SweepState:
    """What the caller may say after an interruption: whether every original limit is back (read back)."""

    restored: bool = False
    failed: list[str] = field(default_factory=list)
    originals: dict[str, Limits] = field(default_factory=dict)


def checked_limits(g: PowerControl, lim: Limits) -> Limits:
    """A tool's limits must make sense before we act on them (or it reports nonsense)."""
    if not (0 < lim.min_w <= lim.max_w <= 10000) or not lim.min_w - 1 <= lim.current_w <= lim.max_w + 1:
        raise PowerError(f"{g.label}: the driver reports nonsense limits (current {lim.current_w:g} W, range "
                         f"{lim.min_w:g}-{lim.max_w:g} W)", "check the GPU index and the driver")
    return lim


def restore(gpus: list[PowerControl], originals: dict[str, Limits]) -> list[str]:
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


def set_checked(g: PowerControl, watts: float) -> None:
    """Sets a limit and reads it back: a tool that ignores it stops the sweep."""
    g.set(watts)
    now = checked_limits(g, g.read()).current_w
    if abs(now - watts) > 1.0:
        raise PowerError(f"{g.label}: asked for {watts:g} W, the driver reports {now:g} W",
                         "this card or driver does not take power limits; the originals were restored")


def sweep(gpus: list[PowerControl], limits: list[float], benchmark: Callable[[], float], settle_s: float = 3.0,
          on_step: Callable[[str], None] | None = None, state: SweepState | None = None) -> list[SweepRow]:
    """Runs benchmark() at every limit on every GPU (all GPUs share the limit of a step). The original
    limits come back on success, error, Ctrl-C and SIGTERM; state says whether they did."""
    state = state if state is not None else SweepState()
    originals = {g.label: checked_limits(g, g.read()) for g in gpus}
    state.originals = originals
    for g in gpus:
        lim = originals[g.label]
        bad = [w for w in limits if not lim.min_w <= w <= lim.max_w]
        if bad:
            raise PowerError(f"{g.label}: {bad[0]:g} W is outside the card's range {lim.min_w:g}-{lim.max_w:g} W",
                             "choose --limits inside that range")
    rows: list[SweepRow] = []
    try:
        for watts in limits:
            for g in gpus:
                set_checked(g, watts)
            if on_step:
                on_step(f"limit {watts:g} W")
            time.sleep(settle_s)
            samplers = {g.label: Sampler.of(g) for g in gpus}
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
        with held():  # a second Ctrl-C waits until every limit is back and read back
            failed = restore(gpus, originals)
            state.failed, state.restored = failed, not failed
        if failed:
            raise PowerError(f"could not restore the power limit of {', '.join(failed)}",
                             "set it by hand: " + "; ".join(
                                 f"{g.label} -> {originals[g.label].current_w:g} W" for g in gpus))
    return rows
