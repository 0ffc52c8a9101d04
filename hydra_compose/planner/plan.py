"""The planner: which layers go to which device, what each device allocates, what
stays in the master's RAM, and how fast the result decodes. Pure arithmetic on
the inventory and the GGUF facts (memory.py prices a range of layers,
placement.py searches the ranges); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..inventory.config import GiB, ClusterConfig, ModelEntry
from ..errors import PlanError
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts
from .memory import F32, N_UBATCH, CacheOptions, DeviceMemory
from .placement import NO_EXTRAS, Extras, Ranges, Slot, best, copies_for, predicted_token_s
from .speculation import Speculation
from .speed import HOST_RAM_GBS, MASTER_TOKEN_S, RPC_STACK_S, SAME_SERVER_S, device_speed, hop_cost
from ..inventory.topology import local_gpus, rpc_workers

MiB = 1024 * 1024
CTX_STEP = 256
HOST_RESERVE_BYTES = 2 * GiB  # the master host's OS, Docker and llama-server itself
EXPERT_PATTERN = "ffn_(gate|up|down|gate_up)_exps"


@dataclass(frozen=True)
class PlannedDevice:
    slot: Slot
    layers: tuple[int, int] | None  # first, last repeating layer (inclusive); None: left out
    has_output: bool
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    state_bytes: int = 0
    projector_bytes: int = 0  # the vision projector (--mmproj) when llama-server puts it here
    draft_bytes: int = 0  # the speculative draft model (weights, KV, compute) when it runs here

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.kv_bytes + self.state_bytes + self.compute_bytes + self.projector_bytes
                + self.draft_bytes)

    @property
    def n_items(self) -> int:
        n = 0 if self.layers is None else self.layers[1] - self.layers[0] + 1
        return n + int(self.has_output)


@dataclass(frozen=True)
class HostMemory:
    """What llama-server keeps in the master host's RAM."""

    token_embd_bytes: int
    expert_bytes: int
    compute_bytes: int
    cache_ram_bytes: int
    budget_bytes: int | None  # ram_gb of the master host minus the OS reserve; None: unknown
    draft_bytes: int = 0  # a draft model on the master's CPU, or a device-placed draft's token embeddings

    @property
    def total_bytes(self) -> int:
        return self.token_embd_bytes + self.expert_bytes + self.compute_bytes + self.cache_ram_bytes + self.draft_bytes


@dataclass(frozen=True)
class PlanOptions:
    ctx: int | None = None  # total context; None: the largest that fits
    parallel: int = 1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = True
    split: str = "speed"  # speed | all
    experts: str = "auto"  # auto | gpu | cpu
    speculative: str = "auto"  # auto | off | draft | mtp | ngram
    draft_max: int | None = None  # --spec-draft-n-max; None: the mode's default
    acceptance: float | None = None  # mean tokens per target pass; None: the mode's default

    @classmethod
    def from_entry(cls, entry: ModelEntry, **overrides: object) -> PlanOptions:
        base = dict(ctx=entry.ctx, parallel=entry.parallel, cache_type_k=entry.cache_type_k,
                    cache_type_v=entry.cache_type_v, flash_attn=entry.flash_attn, split=entry.split,
                    experts=entry.experts, speculative=entry.speculative, draft_max=entry.draft_max,
                    acceptance=entry.acceptance)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)  # type: ignore[arg-type]

    def cache(self, ctx: int) -> CacheOptions:
        return CacheOptions(ctx // self.parallel, self.parallel, self.cache_type_k, self.cache_type_v,
                            self.flash_attn)


@dataclass(frozen=True)
class Plan:
    model: ModelFacts
    options: PlanOptions
    ctx: int
    devices: tuple[PlannedDevice, ...]  # used devices, in llama.cpp order
    left_out: tuple[Slot, ...]
    predicted_tg_tokens_per_s: float
    warnings: tuple[str, ...]
    experts_on_host: tuple[int, ...] = ()  # layers whose routed experts live in the master's RAM
    host: HostMemory | None = None
    projector: ProjectorFacts | None = None
    cache_ram_mib: int = 0
    speculation: Speculation | None = None
    predicted_without_speculation: float = 0.0  # tok/s of the same placement, speculation off

    @property
    def ctx_per_slot(self) -> int:
        return self.ctx // self.options.parallel

    @property
    def tensor_split(self) -> list[int]:
        return [d.n_items for d in self.devices]

    @property
    def rpc_endpoints(self) -> list[str]:
        """Each ggml-rpc-server once, in device order (a server may serve several devices)."""
        out: list[str] = []
        for d in self.devices:
            if d.slot.kind == "rpc" and d.slot.endpoint and d.slot.endpoint not in out:
                out.append(d.slot.endpoint)
        return out

    def llama_server_args(self) -> list[str]:
        o = self.options
        args = []
        if self.rpc_endpoints:
            args += ["--rpc", ",".join(self.rpc_endpoints)]
        args += ["-ngl", str(self.model.n_layer + 1), "--tensor-split", ",".join(map(str, self.tensor_split)),
                 "-c", str(self.ctx), "--parallel", str(o.parallel), "--ubatch-size", str(N_UBATCH),
                 "-fa", "on" if o.flash_attn else "off", "-ctk", o.cache_type_k, "-ctv", o.cache_type_v,
                 "--fit", "off", "--cache-ram", str(self.cache_ram_mib)]
        if self.experts_on_host:
            args += ["-ot", expert_override(self.experts_on_host)]
        if self.speculation is not None:
            args += self.speculation.args()
        return args


def expert_override(layers: tuple[int, ...]) -> str:
    """-ot value keeping exactly these layers' routed experts in host RAM.

    Not --n-cpu-moe: with RPC devices it counts layers from the start of the whole
    model, so it would pin remote layers' experts rather than the ones chosen here.
    """
    return rf"blk\.({'|'.join(map(str, layers))})\.{EXPERT_PATTERN}\.=CPU"


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
        hop = hop_cost(host, host.name == master.name, n_embd)
        for i, dev in enumerate(w.devices):
            # a server's later devices receive activations from its first one directly
            # (same-server copies skip the master): no extra trip over the link
            slots.append(Slot(
                id=f"RPC{i}[{w.endpoint}]", host=w.host, kind="rpc", vendor=dev.vendor, endpoint=w.endpoint,
                budget_bytes=dev.budget_bytes, reserve_bytes=int(dev.reserve * GiB), speed=device_speed(dev),
                hop_s=hop.per_token_s if i == 0 else SAME_SERVER_S, hop_measured=hop.measured, device=dev))
    for i, dev in enumerate(local_gpus(cfg)):
        slots.append(Slot(id=f"{dev.record.backend}{i}", host=master.name, kind="local", vendor=dev.vendor,
                          endpoint=None, budget_bytes=dev.budget_bytes, reserve_bytes=int(dev.reserve * GiB),
                          speed=device_speed(dev), hop_s=0.0, hop_measured=True, device=dev))
    return slots


class _Problem:
    """One model on one cluster: prices ranges at a context, with a set of layers' experts on the host."""

    def __init__(self, cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions,
                 projector: ProjectorFacts | None = None, draft: DraftPlacement | None = None) -> None:
        self.cfg, self.model, self.opts, self.draft = cfg, model, opts, draft
        self.slots = device_slots(cfg, model.n_embd)
        self.moe_layers = tuple(il for il, layer in enumerate(model.layers) if layer.expert_bytes)
        self.extras = NO_EXTRAS
        if projector is not None:
            # llama-server loads the projector on the first GPU-type device it registers: the first
            # local GPU when the master has one, else the first RPC device (the first used slot)
            local = [i for i, s in enumerate(self.slots) if s.kind == "local"]
            self.extras = (Extras(fixed=((local[0], projector.total_bytes),)) if local
                           else Extras(first=projector.total_bytes))

    def memory(self, ctx: int, on_host: tuple[int, ...]) -> DeviceMemory:
        return DeviceMemory(self.model, self.opts.cache(ctx), frozenset(on_host))

    def extras_at(self, ctx: int) -> Extras:
        """Everything beside the layers: the projector, and a draft model on a device (its KV grows with ctx)."""
        d = self.draft
        if d is None or d.slot is None:
            return self.extras
        return Extras(fixed=(*self.extras.fixed, (d.slot, d.device_bytes(self.opts, ctx))), first=self.extras.first)

    def arrange(self, ctx: int, on_host: tuple[int, ...]) -> tuple[float, Ranges] | None:
        return best(self.slots, self.memory(ctx, on_host), self.opts.split, bool(on_host), self.extras_at(ctx))

    def largest_ctx(self, on_host: tuple[int, ...]) -> int | None:
        """Largest total context (tokens per slot a multiple of 256, at most n_ctx_train) that fits."""
        par = self.opts.parallel
        lo, hi = 1, max(1, self.model.n_ctx_train // CTX_STEP)
        if self.arrange(lo * CTX_STEP * par, on_host) is None:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.arrange(mid * CTX_STEP * par, on_host) is not None:
                lo = mid
            else:
                hi = mid - 1
        return lo * CTX_STEP * par

    def experts_for(self, ctx: int | None) -> tuple[int, ...]:
        """Which layers' experts go to host RAM: none unless asked or needed to fit at all."""
        if not self.moe_layers or self.opts.experts == "gpu":
            return ()
        if self.opts.experts == "cpu":
            return self.moe_layers
        probe = ctx or CTX_STEP * self.opts.parallel
        if self.arrange(probe, ()) is not None:
            return ()
        lo, hi = 1, len(self.moe_layers)  # fewest layers (from the first) whose experts must move
        if self.arrange(probe, self.moe_layers) is None:
            return ()  # even all experts on the host do not make it fit: report the shortfall as usual
        while lo < hi:
            mid = (lo + hi) // 2
            if self.arrange(probe, self.moe_layers[:mid]) is not None:
                hi = mid
            else:
                lo = mid + 1
        return self.moe_layers[:lo]


def _check(cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions, slots: list[Slot]) -> None:
    if opts.cache_type_v not in ("f16", "f32", "bf16") and not opts.flash_attn:
        raise PlanError(f"a quantized V cache ({opts.cache_type_v}) needs flash attention",
                        "set flash_attn: true, or use --cache-type-v f16")
    if model.mla and opts.cache_type_k != opts.cache_type_v:
        raise PlanError(f"{model.name} uses MLA: llama.cpp needs the same K and V cache type",
                        f"set cache_type_v: {opts.cache_type_k} (or both to f16)")
    if not slots:
        raise PlanError("the inventory has no device to put layers on",
                        "add a GPU or a cpu device to a host in cluster.yaml")
    if opts.split == "all" and len(slots) > model.n_layer + 1:
        raise PlanError(f"split: all needs a layer per device, but {model.name} has {model.n_layer + 1} "
                        f"(with the output layer) for {len(slots)} devices", "use split: speed, or fewer devices")
    if opts.ctx is not None and opts.ctx // opts.parallel < CTX_STEP:
        raise PlanError(f"--ctx {opts.ctx} leaves {opts.ctx // opts.parallel} tokens per slot with "
                        f"--parallel {opts.parallel}", f"use at least --ctx {CTX_STEP * opts.parallel}")


def _shortfall(p: _Problem, ctx: int, on_host: tuple[int, ...]) -> tuple[Slot, int]:
    """The device most over budget when layers are spread by memory: for the error message."""
    mem = p.memory(ctx, on_host)
    slots = p.slots
    total_budget = sum(s.budget_bytes for s in slots)
    bounds, acc = [0], 0
    for s in slots:
        acc += s.budget_bytes
        bounds.append(round(mem.n_items * acc / total_budget))
    copies = copies_for(len(slots), bool(on_host))
    worst, over = slots[0], -1
    for i, s in enumerate(slots):
        a, b = bounds[i], bounds[i + 1]
        need = mem.total(a, b, i == 0, copies, mem.peak(a, b)) + p.extras_at(ctx).on(i, i == 0)
        if need - s.budget_bytes > over:
            worst, over = s, need - s.budget_bytes
    return worst, max(over, 0)


def make_plan(cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions,
              projector: ProjectorFacts | None = None, draft: ModelFacts | None = None) -> Plan:
    """The plan: placement, context and, where it pays, speculative decoding (planner/choose.py)."""
    from .choose import choose

    return choose(cfg, model, opts, projector, draft)


def plan_once(cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions, projector: ProjectorFacts | None = None,
              draft: DraftPlacement | None = None, spec: Speculation | None = None) -> Plan:
    """One placement: the layers (and a draft model on a device, when given) fitted, the context chosen."""
    p = _Problem(cfg, model, opts, projector, draft)
    _check(cfg, model, opts, p.slots)
    on_host = p.experts_for(opts.ctx)
    if opts.ctx is not None:
        ctx = opts.ctx
        found = p.arrange(ctx, on_host)
        if found is None:
            fits = p.largest_ctx(on_host)
            slot, over = _shortfall(p, ctx, on_host)
            hint = (f"use --ctx {fits} or less" if fits else "the model does not fit at any context") + \
                ", a q8_0 KV cache, fewer --parallel slots, or more devices"
            raise PlanError(f"ctx {ctx} does not fit: {slot.id} on {slot.host} is short by "
                            f"{max(1, over // MiB)} MiB", hint)
    else:
        largest = p.largest_ctx(on_host)
        if largest is None:
            need = sum(model.layer_bytes) + model.output_bytes - model.experts_in(on_host)
            have = sum(s.budget_bytes for s in p.slots)
            hint = "add devices, lower reserve_gb, or use a smaller quantization"
            if p.moe_layers and opts.experts == "gpu":
                hint = "set experts: auto to keep MoE experts in the master's RAM, " + hint
            raise PlanError(f"{model.name} needs {need // MiB} MiB for weights alone; the devices have "
                            f"{have // MiB} MiB in all (largest {max(s.budget_bytes for s in p.slots) // MiB} MiB)",
                            hint)
        ctx = largest
        found = p.arrange(ctx, on_host)
        assert found is not None
    return _result(p, ctx, found[1], on_host, projector, spec)


def _result(p: _Problem, ctx: int, ranges: Ranges, on_host: tuple[int, ...],
            projector: ProjectorFacts | None, spec: Speculation | None) -> Plan:
    model, opts, cfg = p.model, p.opts, p.cfg
    mem = p.memory(ctx, on_host)
    used = [i for i, (a, b) in enumerate(ranges) if b > a]
    copies = copies_for(len(used), bool(on_host))
    devices, left_out = [], []
    served = {slot.endpoint for slot, (a, b) in zip(p.slots, ranges) if b > a and slot.kind == "rpc"}
    for i, (slot, (a, b)) in enumerate(zip(p.slots, ranges)):
        if b <= a:
            # a local GPU, or a device of a server that is in --rpc anyway, stays in
            # llama.cpp's device list: it gets split 0
            if slot.kind == "local" or slot.endpoint in served:
                devices.append(PlannedDevice(slot, None, False, 0, 0, 0))
            left_out.append(slot)
            continue
        last_layer = min(b, model.n_layer) - 1
        devices.append(PlannedDevice(
            slot=slot, layers=(a, last_layer) if last_layer >= a else None, has_output=b == mem.n_items,
            weights_bytes=mem.weights(a, b), kv_bytes=mem.kv_bytes(a, b), state_bytes=mem.state_bytes(a, b),
            compute_bytes=mem.compute(a, b, i == used[0], copies, mem.peak(a, b))))
    devices = _with_projector(devices, projector)
    draft = p.draft
    if draft is not None and draft.slot is not None:
        placed = [d for d in devices if d.slot is p.slots[draft.slot]]
        if not placed:  # the draft's device got no layers and left --rpc: it cannot hold the draft there
            raise PlanError(f"the draft model's device {p.slots[draft.slot].id} is not used by this placement",
                            "set split: all, or let speculative: auto choose")
        devices = [replace(d, draft_bytes=draft.device_bytes(opts, ctx)) if d is placed[0] else d for d in devices]
    for d in devices:  # the search counted everything placed beside the layers; this is the guarantee
        if d.total_bytes > d.slot.budget_bytes:
            raise PlanError(f"{d.slot.id} on {d.slot.host} would need {d.total_bytes // MiB} MiB of its "
                            f"{d.slot.budget_bytes // MiB} MiB" + (" (with the projector)" if d.projector_bytes else ""),
                            "use a smaller --ctx, fewer --parallel slots, or more devices")
    cache_ram = int(cfg.master.cache_ram_gb * 1024)
    host = _host_memory(p, mem, on_host, copies, cache_ram)
    if draft is not None:  # its token embeddings always, its whole self when it runs on the master's CPU
        on_cpu = draft.device_bytes(opts, ctx) if draft.slot is None else 0
        host = replace(host, draft_bytes=draft.facts.input_bytes + on_cpu)
    warnings = _warnings(p, mem, ctx, left_out, on_host, host)
    token_s = MASTER_TOKEN_S + predicted_token_s(p.slots, mem, ranges) + _host_expert_s(p, on_host, host)
    plain = 1.0 / token_s
    if spec is not None:
        compute_s = predicted_token_s(p.slots, mem, ranges, network=False)
        used_gpu = [s.device.is_gpu for s, (a, b) in zip(p.slots, ranges) if b > a]
        token_s = spec.token_s(token_s, compute_s, sum(used_gpu) / max(1, len(used_gpu)))
    return Plan(model=model, options=opts, ctx=ctx, devices=tuple(devices), left_out=tuple(left_out),
                predicted_tg_tokens_per_s=1.0 / token_s, warnings=tuple(warnings), experts_on_host=on_host,
                host=host, projector=projector, cache_ram_mib=cache_ram, speculation=spec,
                predicted_without_speculation=plain)


def _with_projector(devices: list[PlannedDevice], projector: ProjectorFacts | None) -> list[PlannedDevice]:
    """llama-server loads the projector on the first GPU-type device it registered: a local
    GPU if the master has one, else the first RPC device (mtmd's clip backend choice)."""
    if projector is None or not devices:
        return devices
    order = [d for d in devices if d.slot.kind == "local"] + [d for d in devices if d.slot.kind == "rpc"]
    target = order[0]
    return [replace(d, projector_bytes=projector.total_bytes) if d is target else d for d in devices]


def _host_memory(p: _Problem, mem: DeviceMemory, on_host: tuple[int, ...], copies: int,
                 cache_ram_mib: int) -> HostMemory:
    model = p.model
    # the master's own compute buffer: graph inputs (masks, embeddings) per pipeline copy, and the
    # expert matmuls when it runs experts
    inputs = mem.inputs(0, mem.n_items, False) + model.n_embd * N_UBATCH * F32
    compute = copies * inputs + 2 * model.n_embd * N_UBATCH * F32
    if on_host:
        compute += 3 * model.n_expert_used * model.n_ff_exp * N_UBATCH * F32
    ram = p.cfg.master_host.ram_gb
    return HostMemory(token_embd_bytes=model.input_bytes,
                      expert_bytes=model.experts_in(on_host), compute_bytes=compute,
                      cache_ram_bytes=cache_ram_mib * MiB,
                      budget_bytes=int(ram * GiB) - HOST_RESERVE_BYTES if ram else None)


def _host_expert_s(p: _Problem, on_host: tuple[int, ...], host: HostMemory) -> float:
    """Experts in host RAM: only the active ones are read per token, at RAM speed, and every such
    layer crosses from its device to the master's CPU and back."""
    if not on_host:
        return 0.0
    m = p.model
    active = host.expert_bytes * m.n_expert_used / max(1, m.n_expert)
    return active / (HOST_RAM_GBS * 1e9) + len(on_host) * RPC_STACK_S


def _warnings(p: _Problem, mem: DeviceMemory, ctx: int, left_out: list[Slot], on_host: tuple[int, ...],
              host: HostMemory) -> list[str]:
    model, opts = p.model, p.opts
    warnings = []
    if left_out and opts.split != "all":
        everything = best(p.slots, mem, "all", bool(on_host), p.extras_at(ctx)) \
            if len(p.slots) <= model.n_layer + 1 else None
        slower = ""
        if everything:
            t = MASTER_TOKEN_S + predicted_token_s(p.slots, mem, everything[1])
            slower = f" (all devices: {1 / t:.0f} tok/s predicted)"
        for s in left_out:
            warnings.append(f"{s.id} on {s.host} left out: the model fits on faster devices and a split "
                            f"across it would decode slower{slower}; set split: all to pool every device")
    if opts.ctx is None and ctx // opts.parallel < model.n_ctx_train:
        warnings.append(f"context limited by memory to {ctx // opts.parallel} tokens per slot "
                        f"(the model was trained for {model.n_ctx_train})")
    if on_host:
        warnings.append(f"experts of {len(on_host)} of {len(p.moe_layers)} MoE layers stay in the master's RAM "
                        f"({host.expert_bytes // MiB} MiB): the rest did not fit the devices; decoding reads "
                        "them at RAM speed")
    if host.budget_bytes is not None and host.total_bytes > host.budget_bytes:
        raise PlanError(f"the master host {p.cfg.master.host} needs {host.total_bytes // MiB} MiB of RAM "
                        f"(experts, embeddings, prompt cache) but has {host.budget_bytes // MiB} MiB to spare",
                        "lower master.cache_ram_gb, add devices, or set ram_gb if it is wrong")
    return warnings


@dataclass(frozen=True)
class DraftPlacement:
    """A draft model and where it runs: a slot index, or None for the master's CPU."""

    facts: ModelFacts
    slot: int | None

    def cache(self, opts: PlanOptions, ctx: int) -> CacheOptions:
        # the draft context holds as many tokens per sequence as the target's (common/speculative.cpp)
        return CacheOptions(ctx // opts.parallel, opts.parallel, opts.cache_type_k, opts.cache_type_v, opts.flash_attn)

    def device_bytes(self, opts: PlanOptions, ctx: int) -> int:
        """Weights, KV and compute of the whole draft model on one device (token embeddings stay on the host)."""
        mem = DeviceMemory(self.facts, self.cache(opts, ctx))
        return mem.total(0, mem.n_items, True, 1, mem.peak(0, mem.n_items))
