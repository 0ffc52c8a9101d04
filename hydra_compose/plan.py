"""The planner: which layers go to which device, how much memory each needs,
and how fast the result decodes. Pure arithmetic on the inventory and the
GGUF facts; no I/O.

Memory per device (all formulas checked against llama-server -lv 4 logs, see
README "Plan accuracy"):
  weights  = exact bytes of its layers' tensors (+ the output layer on the last device)
  kv       = sum over its layers of n_head_kv(l) * (d_k*B(type_k) + d_v*B(type_v)) * n_ctx
  compute  = C*(mask + a*E) + max(3*F, attention) (+ 3*E on all but the first device)
    with U = n_ubatch tokens, E = n_embd*U*4, F = n_ff*U*4,
    mask = n_ctx_slot*U*(2 if flash attention else 4),
    attention = 0 with flash attention, else n_ctx_slot*U*n_head*4 + 3*n_head*d_k*U*4,
    a = 4 on the first device, 1 on the others, and C = 4 pipeline copies when
    more than one device is used (llama.cpp enables pipeline parallelism), else 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

from .config import ClusterConfig, Device, ModelEntry
from .errors import PlanError
from .gguf_facts import ModelFacts
from .speed import device_bandwidth_gbs, rpc_overhead_s
from .topology import local_gpus, rpc_workers

MiB = 1024 * 1024
N_UBATCH = 512
PIPELINE_COPIES = 4
CTX_STEP = 256
MASTER_TOKEN_S = 0.3e-3  # sampling and embedding lookup on the master, per token


@dataclass(frozen=True)
class Slot:
    """One device as llama.cpp numbers it."""

    id: str
    host: str
    kind: str  # "rpc" | "local"
    vendor: str
    endpoint: str | None
    budget_bytes: int
    bandwidth_gbs: float
    overhead_s: float
    device: Device


@dataclass(frozen=True)
class PlannedDevice:
    slot: Slot
    layers: tuple[int, int] | None  # first, last repeating layer (inclusive); None: left out
    has_output: bool
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def n_items(self) -> int:
        n = 0 if self.layers is None else self.layers[1] - self.layers[0] + 1
        return n + int(self.has_output)


@dataclass(frozen=True)
class PlanOptions:
    ctx: int | None = None  # total context; None: the largest that fits
    parallel: int = 1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = True
    split: str = "speed"  # speed | all

    @classmethod
    def from_entry(cls, entry: ModelEntry, **overrides: object) -> PlanOptions:
        base = dict(ctx=entry.ctx, parallel=entry.parallel, cache_type_k=entry.cache_type_k,
                    cache_type_v=entry.cache_type_v, flash_attn=entry.flash_attn, split=entry.split)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Plan:
    model: ModelFacts
    options: PlanOptions
    ctx: int
    devices: tuple[PlannedDevice, ...]  # used devices, in llama.cpp order
    left_out: tuple[Slot, ...]
    predicted_tg_tokens_per_s: float
    warnings: tuple[str, ...]

    @property
    def ctx_per_slot(self) -> int:
        return self.ctx // self.options.parallel

    @property
    def tensor_split(self) -> list[int]:
        return [d.n_items for d in self.devices]

    @property
    def rpc_endpoints(self) -> list[str]:
        return [d.slot.endpoint for d in self.devices if d.slot.kind == "rpc" and d.slot.endpoint]

    def llama_server_args(self) -> list[str]:
        o = self.options
        args = []
        if self.rpc_endpoints:
            args += ["--rpc", ",".join(self.rpc_endpoints)]
        args += ["-ngl", str(self.model.n_layer + 1), "--tensor-split", ",".join(map(str, self.tensor_split)),
                 "-c", str(self.ctx), "--parallel", str(o.parallel), "--ubatch-size", str(N_UBATCH),
                 "-fa", "on" if o.flash_attn else "off", "-ctk", o.cache_type_k, "-ctv", o.cache_type_v,
                 "--fit", "off"]
        return args


def device_slots(cfg: ClusterConfig, n_embd: int) -> list[Slot]:
    """Devices in llama.cpp's order: RPC devices in --rpc order, then the master's GPUs.

    GPUs on the master host of the master's vendor are used directly; every other
    device (CPU devices on the master host too) is served by a ggml-rpc-server.
    n_embd sizes the activations each RPC hop carries.
    """
    slots = []
    master = cfg.master_host
    for w in rpc_workers(cfg):
        host = cfg.host(w.host)
        slots.append(Slot(
            id=f"RPC[{w.address}:{w.port}]", host=w.host, kind="rpc", vendor=w.device.vendor,
            endpoint=f"{w.address}:{w.port}", budget_bytes=w.device.budget_bytes,
            bandwidth_gbs=device_bandwidth_gbs(w.device),
            overhead_s=rpc_overhead_s(host, host.name == master.name, n_embd), device=w.device))
    for i, dev in enumerate(local_gpus(cfg)):
        prefix = "CUDA" if dev.vendor == "nvidia" else "ROCm"
        slots.append(Slot(id=f"{prefix}{i}", host=master.name, kind="local", vendor=dev.vendor, endpoint=None,
                          budget_bytes=dev.budget_bytes, bandwidth_gbs=device_bandwidth_gbs(dev),
                          overhead_s=0.0, device=dev))
    return slots


def compute_bytes(model: ModelFacts, ctx_slot: int, flash_attn: bool, first: bool, n_used: int) -> int:
    u = N_UBATCH
    e = model.n_embd * u * 4
    f = model.n_ff * u * 4
    mask = ctx_slot * u * (2 if flash_attn else 4)
    attention = 0 if flash_attn else ctx_slot * u * model.n_head * 4 + 3 * model.n_head * model.head_dim_k * u * 4
    copies = PIPELINE_COPIES if n_used > 1 else 1
    size = copies * (mask + (4 if first else 1) * e) + max(3 * f, attention)
    return size if first else size + 3 * e


class _Layout:
    """Prefix sums over the items llama.cpp splits: the repeating layers, then the output layer."""

    def __init__(self, model: ModelFacts, opts: PlanOptions, ctx: int) -> None:
        n = model.n_layer
        self.n_items = n + 1
        weights = list(model.layer_bytes) + [model.output_bytes]
        kv = [round(model.kv_bytes_per_token(layer, opts.cache_type_k, opts.cache_type_v) * ctx)
              for layer in range(n)] + [0]
        self.w = [0, *accumulate(weights)]
        self.kv = [0, *accumulate(kv)]

    def weights(self, a: int, b: int) -> int:
        return self.w[b] - self.w[a]

    def kv_bytes(self, a: int, b: int) -> int:
        return self.kv[b] - self.kv[a]


def _search(slots: list[Slot], model: ModelFacts, opts: PlanOptions, ctx: int, n_used_min: int,
            n_used_max: int, objective: str) -> tuple[float, list[tuple[int, int]]] | None:
    """Best contiguous ranges (one per slot, possibly empty) covering every item.

    Exact dynamic programme over (slot, items covered, devices used so far).
    objective "sum": total decode time; "max": the slowest device's time.
    """
    lay = _Layout(model, opts, ctx)
    n_items = lay.n_items
    ctx_slot = ctx // opts.parallel
    multi = n_used_max > 1
    # state: (items covered, used count capped at 2) -> (cost, ranges)
    states: dict[tuple[int, int], tuple[float, list[tuple[int, int]]]] = {(0, 0): (0.0, [])}
    for slot in slots:
        nxt: dict[tuple[int, int], tuple[float, list[tuple[int, int]]]] = {}
        for (a, used), (cost, ranges) in states.items():
            best = nxt.get((a, used))  # this slot left empty
            if best is None or cost < best[0]:
                nxt[(a, used)] = (cost, ranges + [(a, a)])
            if used >= n_used_max:
                continue
            first = used == 0
            comp = compute_bytes(model, ctx_slot, opts.flash_attn, first, 2 if multi else 1)
            for b in range(a + 1, n_items + 1):
                w = lay.weights(a, b)
                total = w + lay.kv_bytes(a, b) + comp
                if total > slot.budget_bytes:
                    break
                t = w / (slot.bandwidth_gbs * 1e9) + slot.overhead_s
                new_cost = cost + t if objective == "sum" else max(cost, t)
                k2 = (b, min(used + 1, 2))
                best = nxt.get(k2)
                if best is None or new_cost < best[0] - 1e-15:
                    nxt[k2] = (new_cost, ranges + [(a, b)])
        states = nxt
    done = [(c, r) for (a, used), (c, r) in states.items()
            if a == n_items and used >= min(n_used_min, 2) and sum(1 for x, y in r if y > x) >= n_used_min]
    if not done:
        return None
    return min(done, key=lambda cr: cr[0])


def _best(slots: list[Slot], model: ModelFacts, opts: PlanOptions, ctx: int,
          force_all: bool = False) -> tuple[float, list[tuple[int, int]]] | None:
    """Best arrangement at this context: on one device, or on several (pipeline copies)."""
    if force_all:
        objective = "max" if opts.split == "all" else "sum"
        if len(slots) == 1:
            return _search(slots, model, opts, ctx, 1, 1, objective)
        return _search(slots, model, opts, ctx, len(slots), len(slots), objective)
    candidates = [r for r in (_search(slots, model, opts, ctx, 1, 1, "sum"),
                              _search(slots, model, opts, ctx, 2, len(slots), "sum") if len(slots) > 1 else None)
                  if r is not None]
    return min(candidates, key=lambda cr: cr[0]) if candidates else None


def _predicted_tps(slots: list[Slot], model: ModelFacts, ranges: list[tuple[int, int]]) -> float:
    lay = _Layout(model, PlanOptions(), 0)
    t = MASTER_TOKEN_S
    for slot, (a, b) in zip(slots, ranges):
        if b > a:
            t += lay.weights(a, b) / (slot.bandwidth_gbs * 1e9) + slot.overhead_s
    return 1.0 / t


def _shortfall(slots: list[Slot], model: ModelFacts, opts: PlanOptions, ctx: int) -> tuple[Slot, int]:
    """The device most over budget when layers are spread by memory: for the error message."""
    lay = _Layout(model, opts, ctx)
    total_budget = sum(s.budget_bytes for s in slots)
    bounds, acc = [0], 0
    for s in slots:
        acc += s.budget_bytes
        bounds.append(round(lay.n_items * acc / total_budget))
    worst, over = slots[0], -1
    for i, s in enumerate(slots):
        a, b = bounds[i], bounds[i + 1]
        need = lay.weights(a, b) + lay.kv_bytes(a, b) + compute_bytes(
            model, ctx // opts.parallel, opts.flash_attn, i == 0, len(slots))
        if need - s.budget_bytes > over:
            worst, over = s, need - s.budget_bytes
    return worst, max(over, 0)


def make_plan(cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions) -> Plan:
    if opts.cache_type_v not in ("f16", "f32", "bf16") and not opts.flash_attn:
        raise PlanError(f"a quantized V cache ({opts.cache_type_v}) needs flash attention",
                        "set flash_attn: true, or use --cache-type-v f16")
    slots = device_slots(cfg, model.n_embd)
    if not slots:
        raise PlanError("the inventory has no device to put layers on",
                        "add a GPU or a cpu device to a host in cluster.yaml")
    force_all = opts.split == "all"
    n_ctx_max = model.n_ctx_train
    if opts.ctx is not None:
        ctx = opts.ctx
        if ctx // opts.parallel < CTX_STEP:
            raise PlanError(f"--ctx {ctx} leaves {ctx // opts.parallel} tokens per slot with --parallel {opts.parallel}",
                            f"use at least --ctx {CTX_STEP * opts.parallel}")
        found = _best(slots, model, opts, ctx, force_all)
        if found is None:
            fits = _largest_ctx(slots, model, opts, n_ctx_max, force_all)
            slot, over = _shortfall(slots, model, opts, ctx)
            hint = (f"use --ctx {fits * opts.parallel} or less" if fits else "the model does not fit at any context") + \
                ", a q8_0 KV cache, fewer --parallel slots, or more devices"
            raise PlanError(f"ctx {ctx} does not fit: {slot.id} on {slot.host} is short by "
                            f"{max(1, over // MiB)} MiB", hint)
    else:
        per_slot = _largest_ctx(slots, model, opts, n_ctx_max, force_all)
        if per_slot is None:
            need = sum(model.layer_bytes) + model.output_bytes
            have = sum(s.budget_bytes for s in slots)
            raise PlanError(f"{model.name} needs {need // MiB} MiB for weights alone; "
                            f"the devices have {have // MiB} MiB in all (largest {max(s.budget_bytes for s in slots) // MiB} MiB)",
                            "add devices, lower reserve_gb, or use a smaller quantization")
        ctx = per_slot * opts.parallel
        found = _best(slots, model, opts, ctx, force_all)
        assert found is not None
    _, ranges = found
    used = [i for i, (a, b) in enumerate(ranges) if b > a]
    n_items = model.n_layer + 1
    lay = _Layout(model, opts, ctx)
    devices, left_out = [], []
    for i, (slot, (a, b)) in enumerate(zip(slots, ranges)):
        if b <= a:
            if slot.kind == "local":  # a local GPU cannot be removed from the device list: split 0
                devices.append(PlannedDevice(slot, None, False, 0, 0, 0))
            left_out.append(slot)
            continue
        has_output = b == n_items
        last_layer = min(b, model.n_layer) - 1
        devices.append(PlannedDevice(
            slot=slot, layers=(a, last_layer) if last_layer >= a else None, has_output=has_output,
            weights_bytes=lay.weights(a, b), kv_bytes=lay.kv_bytes(a, b),
            compute_bytes=compute_bytes(model, ctx // opts.parallel, opts.flash_attn, i == used[0], len(used))))
    tps = _predicted_tps(slots, model, ranges)
    warnings = []
    if left_out and not force_all:
        everything = _best(slots, model, opts, ctx, force_all=True)
        slower = f" (all devices: {_predicted_tps(slots, model, everything[1]):.0f} tok/s predicted)" if everything else ""
        for s in left_out:
            warnings.append(f"{s.id} on {s.host} left out: the model fits on faster devices and a split "
                            f"across it would decode slower{slower}; set split: all to pool every device")
    if opts.ctx is None and ctx // opts.parallel < model.n_ctx_train:
        warnings.append(f"context limited by memory to {ctx // opts.parallel} tokens per slot "
                        f"(the model was trained for {model.n_ctx_train})")
    return Plan(model=model, options=opts, ctx=ctx, devices=tuple(devices), left_out=tuple(left_out),
                predicted_tg_tokens_per_s=tps, warnings=tuple(warnings))


def _largest_ctx(slots: list[Slot], model: ModelFacts, opts: PlanOptions, n_ctx_max: int,
                 force_all: bool) -> int | None:
    """Largest tokens-per-slot (a multiple of 256, at most n_ctx_train) that fits; None if none."""
    lo, hi = 1, max(1, n_ctx_max // CTX_STEP)
    if _best(slots, model, opts, lo * CTX_STEP * opts.parallel, force_all) is None:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _best(slots, model, opts, mid * CTX_STEP * opts.parallel, force_all) is not None:
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_STEP
