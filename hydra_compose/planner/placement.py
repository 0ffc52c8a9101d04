"""The search: contiguous layer ranges per device that fit and decode fastest.

Exact dynamic programme over (device, items covered, devices used so far). Items
are llama.cpp's: the repeating layers, then the output layer. Memory per range
comes from memory.DeviceMemory; time per range from the device's bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory import PIPELINE_COPIES, DeviceMemory
from .speed import DeviceSpeed


@dataclass(frozen=True)
class Slot:
    """One device as llama.cpp numbers it."""

    id: str
    host: str
    kind: str  # "rpc" | "local"
    vendor: str
    endpoint: str | None
    budget_bytes: int
    reserve_bytes: int
    speed: DeviceSpeed
    hop_s: float  # reaching this device each token (RPC: the server's link and stack; 0 for local GPUs)
    hop_measured: bool
    device: object  # config.Device


Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Extras:
    """Bytes placed beside the layers, which the fit must count: on given slots (a draft model, a
    projector on a local GPU), and on whichever device ends up first (a projector without local GPUs:
    llama-server puts it on the first device it registers)."""

    fixed: tuple[tuple[int, int], ...] = ()  # (slot index, bytes)
    first: int = 0

    def on(self, index: int, first: bool) -> int:
        return sum(b for i, b in self.fixed if i == index) + (self.first if first else 0)


NO_EXTRAS = Extras()


def copies_for(n_used: int, overrides: bool) -> int:
    """llama.cpp turns pipeline parallelism on for several devices, unless tensors are overridden."""
    return PIPELINE_COPIES if n_used > 1 and not overrides else 1


def _time(slot: Slot, mem: DeviceMemory, a: int, b: int) -> float:
    """One token's time on this device for items [a, b) (see speed.py)."""
    experts = mem.active_expert_bytes(a, b)
    dense = mem.active_bytes(a, b) - experts
    s = slot.speed
    return s.fixed_s + dense / (s.dense_gbs * 1e9) + experts / (s.expert_gbs * 1e9) + slot.hop_s


def search(slots: list[Slot], mem: DeviceMemory, n_used_min: int, n_used_max: int, objective: str,
           overrides: bool, every_slot: bool = False, extras: Extras = NO_EXTRAS) -> tuple[float, Ranges] | None:
    """Best contiguous ranges (one per slot, possibly empty) covering every item.

    objective "sum": total decode time; "max": the slowest device's time.
    every_slot: no slot may stay empty (split: all).
    """
    n_items = mem.n_items
    copies = copies_for(n_used_max, overrides)
    # state: (items covered, used count capped at 2: first device / more than one) -> (cost, ranges)
    states: dict[tuple[int, int], tuple[float, Ranges]] = {(0, 0): (0.0, [])}
    for index, slot in enumerate(slots):
        nxt: dict[tuple[int, int], tuple[float, Ranges]] = {}
        for (a, used), (cost, ranges) in states.items():
            if not every_slot:
                best = nxt.get((a, used))  # this slot left empty
                if best is None or cost < best[0]:
                    nxt[(a, used)] = (cost, ranges + [(a, a)])
            if used >= n_used_max:
                continue
            first = used == 0
            budget = slot.budget_bytes - extras.on(index, first)
            peak = 0
            for b in range(a + 1, n_items + 1):
                peak = max(peak, mem.temp[b - 1])
                if mem.total(a, b, first, copies, peak) > budget:
                    break
                t = _time(slot, mem, a, b)
                new_cost = cost + t if objective == "sum" else max(cost, t)
                key = (b, min(used + 1, 2))
                best = nxt.get(key)
                if best is None or new_cost < best[0] - 1e-15:
                    nxt[key] = (new_cost, ranges + [(a, b)])
        states = nxt
    done = [(c, r) for (a, used), (c, r) in states.items()
            if a == n_items and sum(1 for x, y in r if y > x) >= n_used_min]
    return min(done, key=lambda cr: cr[0]) if done else None


def best(slots: list[Slot], mem: DeviceMemory, split: str, overrides: bool,
         extras: Extras = NO_EXTRAS) -> tuple[float, Ranges] | None:
    """Best arrangement: on one device or on several (their pipeline copies priced); split
    "all" puts layers on every device, balancing the slowest one."""
    if split == "all":
        n = len(slots)
        return search(slots, mem, n, n, "max", overrides, every_slot=True, extras=extras)
    found = [r for r in (search(slots, mem, 1, 1, "sum", overrides, extras=extras),
                         search(slots, mem, 2, len(slots), "sum", overrides, extras=extras) if len(slots) > 1
                         else None)
             if r is not None]
    return min(found, key=lambda cr: cr[0]) if found else None


def predicted_token_s(slots: list[Slot], mem: DeviceMemory, ranges: Ranges, network: bool = True) -> float:
    """Seconds per token on the devices; network=False: only their compute (no fixed costs, no hops)."""
    if network:
        return sum(_time(slot, mem, a, b) for slot, (a, b) in zip(slots, ranges) if b > a)
    total = 0.0
    for slot, (a, b) in zip(slots, ranges):
        if b > a:
            experts = mem.active_expert_bytes(a, b)
            total += (mem.active_bytes(a, b) - experts) / (slot.speed.dense_gbs * 1e9) + \
                experts / (slot.speed.expert_gbs * 1e9)
    return total
