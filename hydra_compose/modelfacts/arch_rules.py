"""Which layers of an architecture keep what state, as llama.cpp decides it.

llama.cpp's per-architecture `load_arch_hparams` (src/models/<arch>.cpp) marks
layers as sliding-window (SWA) or recurrent; the memory modules then give SWA
layers a window-sized KV cache, recurrent layers a fixed state and no KV, and
MLA models a K-only cache. These tables mirror those decisions for the
architectures people run; an architecture not listed gets full-size KV on every
layer, which over-estimates and so never plans an OOM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# arch -> (needs the sliding_window key > 0 to switch SWA on, default pattern,
#          dense_first, default window). Pattern n: every n-th layer is full attention.
_SWA = {
    "gemma2": (False, 2, False, 4096),
    "gemma3": (True, 6, False, 0),
    "gemma3n": (False, 5, False, 0),
    "gemma4": (False, 0, False, 0),
    "cohere2": (False, 4, False, 0),
    "cohere2moe": (False, 4, True, 0),
    "gpt-oss": (False, 2, False, 0),
    "exaone4": (True, 4, False, 4096),
    "exaone-moe": (False, 4, False, 128),
    "olmo2": (True, 4, False, 0),
    "afmoe": (True, 4, False, 0),
    "mellum": (True, 4, False, 0),
    "plamo3": (True, 8, False, 0),
    "smallthinker": (True, 4, True, 4096),
    "granite-swa": (False, 0, False, 0),
    "mimo2": (False, 0, False, 0),
    "llama4": (False, 4, False, 8192),  # chunked attention; an explicit window of 0 turns it off
}
_RECURRENT = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}
# hybrids whose recurrent layers are those without KV heads
_HYBRID_BY_KV_HEADS = {"jamba", "granite-hybrid", "plamo2", "lfm2", "lfm2moe", "kimi-linear",
                       "nemotron-h", "nemotron-h-moe"}
# hybrids with every full_attention_interval-th layer attention (or an explicit layer list)
_HYBRID_BY_INTERVAL = {"qwen3next", "qwen35", "qwen35moe", "qwen4exp"}
_HYBRID_BOTH = {"falcon-h1"}  # every layer has attention and a recurrent state

Getter = Callable[[str, object], object]


@dataclass(frozen=True)
class LayerKinds:
    swa: tuple[bool, ...]
    recurrent: tuple[bool, ...]
    attention: tuple[bool, ...]  # holds KV cache
    n_swa: int


def _pattern(n_layer: int, n_pattern: int, dense_first: bool) -> tuple[bool, ...]:
    if dense_first:
        return tuple(n_pattern == 0 or il % n_pattern != 0 for il in range(n_layer))
    return tuple(n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layer))


def _flags(value: object, n_layer: int) -> tuple[bool, ...] | None:
    if isinstance(value, list) and len(value) >= n_layer:
        return tuple(bool(v) for v in value[:n_layer])
    return None


def layer_kinds(arch: str, n_layer: int, n_head_kv: tuple[int, ...], n_ff: tuple[int, ...], key: Getter) -> LayerKinds:
    no = (False,) * n_layer
    swa, n_swa = no, 0
    window = key("attention.sliding_window", None)
    if arch in _SWA:
        needs_key, n_pattern, dense_first, default_window = _SWA[arch]
        on = not needs_key or (isinstance(window, int) and window > 0)
        if arch == "llama4" and window == 0:
            on = False
        if on:
            n_swa = window if isinstance(window, int) and window > 0 else default_window
            if arch == "smallthinker":
                n_swa = 4096  # llama.cpp fixes it whatever the file says
            pattern = key("attention.sliding_window_pattern", None)
            swa = _flags(pattern, n_layer) or _pattern(
                n_layer, pattern if isinstance(pattern, int) and pattern >= 0 else n_pattern, dense_first)
    if arch in _RECURRENT:
        return LayerKinds(no, (True,) * n_layer, no, 0)
    recurrent = no
    if arch in _HYBRID_BY_KV_HEADS:
        recurrent = tuple(n_head_kv[il] == 0 and (arch not in ("nemotron-h", "nemotron-h-moe") or n_ff[il] == 0)
                          for il in range(n_layer))
        if arch in ("lfm2", "lfm2moe") and isinstance(window, int) and window > 0:
            swa, n_swa = tuple(not r for r in recurrent), window
    elif arch in _HYBRID_BY_INTERVAL:
        explicit = _flags(key("attention.recurrent_layers", None), n_layer)
        interval = key("full_attention_interval", 4)
        interval = interval if isinstance(interval, int) and interval > 0 else 4
        recurrent = explicit or tuple((il + 1) % interval != 0 for il in range(n_layer))
    elif arch in _HYBRID_BOTH:
        return LayerKinds(no, (True,) * n_layer, tuple(h > 0 for h in n_head_kv), 0)
    attention = tuple(not r and n_head_kv[il] > 0 for il, r in enumerate(recurrent))
    return LayerKinds(tuple(s and a for s, a in zip(swa, attention)), recurrent, attention, n_swa)


def state_elems(arch: str, n_embd: int, key: Getter) -> tuple[int, int]:
    """Recurrent state per sequence of one recurrent layer: (conv/shift elements, state elements), f32.

    llama_hparams::n_embd_r() and n_embd_s().
    """
    wkv = key("wkv.head_size", 0)
    if isinstance(wkv, int) and wkv > 0:  # RWKV: token shift and the wkv state
        shift = key("token_shift_count", 2)
        return int(shift if isinstance(shift, int) else 2) * n_embd, n_embd * wkv
    l_cache = key("shortconv.l_cache", 0)
    if isinstance(l_cache, int) and l_cache > 0:  # LFM2 short convolutions
        return n_embd * (l_cache - 1), 0
    d_conv, d_inner = key("ssm.conv_kernel", 0), key("ssm.inner_size", 0)
    d_state, n_group = key("ssm.state_size", 0), key("ssm.group_count", 0)
    ints = [v if isinstance(v, int) else 0 for v in (d_conv, d_inner, d_state, n_group)]
    d_conv, d_inner, d_state, n_group = ints
    return max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state), d_state * d_inner
