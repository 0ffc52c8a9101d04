"""How many bytes llama-server allocates on one device for a contiguous range of
layers: weights, KV cache, recurrent state and compute buffer. Pure arithmetic
on the GGUF facts; every rule names the llama.cpp source it mirrors and was
checked against llama-server -lv 4 logs (bench/plan_accuracy.py).

KV cells per layer (llama-kv-cache.cpp, llama-kv-cache-iswa.cpp; one stream per slot):
  full attention: n_ctx_slot per slot
  sliding window: pad256(min(n_ctx_slot, n_swa + n_ubatch)) per slot
  bytes per cell: K elems * B(type_k) + V elems * B(type_v); MLA keeps K only; without
  flash attention V is stored transposed at the widest layer's V width.
Recurrent state (llama-memory-recurrent.cpp): (conv + ssm) elements * 4 bytes * max(1, slots).
Compute buffer (ggml-backend scheduler, see compute_bytes): graph inputs on the device
(attention masks for the kinds of layers it holds, the embeddings) times the pipeline
copies, plus the largest per-layer temporary, plus the split's input off the first device.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

from ..modelfacts.gguf_facts import ModelFacts, cache_type_bytes

N_UBATCH = 512
PIPELINE_COPIES = 4  # ggml_backend_sched copies of graph inputs with pipeline parallelism (RPC included)
F32 = 4


def pad(x: int, n: int) -> int:
    return (x + n - 1) // n * n


def _prefix(per_item: list[int]) -> list[int]:
    """Prefix sums over llama.cpp's items (the layers, then the output layer): [a, b) in O(1)."""
    return [0, *accumulate(per_item)]


@dataclass(frozen=True)
class CacheOptions:
    ctx_slot: int  # tokens per slot (llama.cpp's n_ctx_seq)
    n_seq: int  # slots (--parallel); one KV stream each
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = True


def swa_cells(model: ModelFacts, ctx_slot: int) -> int:
    return pad(min(ctx_slot, model.sliding_window + N_UBATCH), 256)


def layer_kv_bytes(model: ModelFacts, il: int, o: CacheOptions) -> int:
    layer = model.layers[il]
    if not layer.has_kv:
        return 0
    cells = swa_cells(model, o.ctx_slot) if layer.kind == "swa" else o.ctx_slot
    v_elems = layer.v_elems if o.flash_attn or not layer.v_elems else model.v_elems_max
    per_cell = layer.k_elems * cache_type_bytes(o.type_k) + v_elems * cache_type_bytes(o.type_v)
    return round(per_cell * cells) * o.n_seq


def layer_state_bytes(model: ModelFacts, il: int, o: CacheOptions) -> int:
    return model.state_elems * F32 * max(1, o.n_seq) if model.layers[il].has_state else 0


def _layer_temp(model: ModelFacts, il: int, o: CacheOptions) -> int:
    """The largest temporary one layer needs while it runs, for an n_ubatch-token batch."""
    layer, u = model.layers[il], N_UBATCH
    ffn_width = layer.n_ff if layer.n_ff else model.n_expert_used * model.n_ff_exp
    temp = 3 * ffn_width * u * F32
    if layer.has_kv and not o.flash_attn:
        n_kv = swa_cells(model, o.ctx_slot) if layer.kind == "swa" else o.ctx_slot
        d_k = model.head_dim_k
        attention = n_kv * u * layer.n_head * F32 + 3 * layer.n_head * d_k * u * F32
        if model.mla:  # V is a view of the latent K cache: transposed into a copy first
            attention += n_kv * layer.k_elems * cache_type_bytes(o.type_k)
        temp = max(temp, attention)
    return temp


# Mamba-style layers (ssm_in, conv, scan): their temporaries in units of ssm_in's output
# for one batch, by where the device sits. With pipeline parallelism llama.cpp runs part of
# each layer's state update next to the previous split, so boundaries cost more. Measured on
# four mamba2 widths (bench/plan_accuracy.py): 2.5-2.6, 4.1-4.5, 6.3-6.6, 7.9-8.5.
SSM_TEMP_SINGLE, SSM_TEMP_FIRST, SSM_TEMP_LAST, SSM_TEMP_MIDDLE = 2.6, 4.5, 6.65, 8.5


class DeviceMemory:
    """Prefix sums over the n_layer + 1 items llama.cpp splits (the output layer last),
    so any contiguous range is priced in O(1) (the planner's search prices many)."""

    def __init__(self, model: ModelFacts, o: CacheOptions, experts_on_host: frozenset[int] = frozenset()) -> None:
        n = model.n_layer
        self.model, self.opts, self.n_items = model, o, n + 1
        weights = [b - (model.layers[il].expert_bytes if il in experts_on_host else 0)
                   for il, b in enumerate(model.layer_bytes)]
        self.w = _prefix(weights + [model.output_bytes])
        # bytes read per decoded token: a MoE layer reads only its active experts
        share = model.n_expert_used / model.n_expert if model.n_expert else 1.0
        experts = [round(model.layers[il].expert_bytes * share) if il not in experts_on_host else 0
                   for il in range(n)]
        active = [w - model.layers[il].expert_bytes + experts[il] if il not in experts_on_host else w
                  for il, w in enumerate(weights)]
        self.active = _prefix(active + [model.output_bytes])
        self.active_experts = _prefix(experts + [0])  # the part of `active` that is expert matmuls
        self.kv = _prefix([layer_kv_bytes(model, il, o) for il in range(n)] + [0])
        self.rs = _prefix([layer_state_bytes(model, il, o) for il in range(n)] + [0])
        # how many layers of each kind a range holds (the output item holds none)
        self.n_full = _prefix([int(layer.kind in ("full", "hybrid")) for layer in model.layers] + [0])
        self.n_swa = _prefix([int(layer.kind == "swa") for layer in model.layers] + [0])
        self.n_ssm = _prefix([int(layer.has_state and model.ssm_in_width > 0) for layer in model.layers] + [0])
        self.temp = [_layer_temp(model, il, o) for il in range(n)] + [0]
        self.ssm_unit = model.ssm_in_width * N_UBATCH * F32
        self.mask_row = N_UBATCH * (2 if o.flash_attn else 4)  # f16 masks with flash attention
        self.embd = model.n_embd * N_UBATCH * F32

    def weights(self, a: int, b: int) -> int:
        return self.w[b] - self.w[a]

    def active_bytes(self, a: int, b: int) -> int:
        return self.active[b] - self.active[a]

    def active_expert_bytes(self, a: int, b: int) -> int:
        return self.active_experts[b] - self.active_experts[a]

    def kv_bytes(self, a: int, b: int) -> int:
        return self.kv[b] - self.kv[a]

    def state_bytes(self, a: int, b: int) -> int:
        return self.rs[b] - self.rs[a]

    def inputs(self, a: int, b: int, first: bool) -> int:
        """Graph inputs a device holds: masks only for the kinds of layers it runs."""
        size = (4 if first else 1) * self.embd
        if self.n_full[b] - self.n_full[a]:
            size += self.opts.ctx_slot * self.mask_row
        if self.n_swa[b] - self.n_swa[a]:
            size += swa_cells(self.model, self.opts.ctx_slot) * self.mask_row
        return size

    def compute(self, a: int, b: int, first: bool, copies: int, peak: int) -> int:
        """peak: the largest layer temporary in [a, b) (the caller keeps it as b grows)."""
        if self.n_ssm[b] - self.n_ssm[a]:
            last = b == self.n_items
            factor = (SSM_TEMP_SINGLE if copies == 1 else SSM_TEMP_FIRST if first
                      else SSM_TEMP_LAST if last else SSM_TEMP_MIDDLE)
            peak = max(peak, round(factor * self.ssm_unit))
        size = copies * self.inputs(a, b, first) + peak
        return size if first else size + 3 * self.embd

    def total(self, a: int, b: int, first: bool, copies: int, peak: int) -> int:
        return self.weights(a, b) + self.kv_bytes(a, b) + self.state_bytes(a, b) + self.compute(a, b, first, copies, peak)

    def peak(self, a: int, b: int) -> int:
        return max(self.temp[a:b], default=0)
