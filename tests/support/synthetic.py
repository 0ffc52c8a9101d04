"""Random-weight GGUF files of real llama.cpp architectures, for tests and benchmarks.

llama.cpp loads and runs them like a real model (the text is nonsense), so the
planner's memory arithmetic and the split speed can be checked against the real
llama-server without downloading anything. Tensor names and shapes follow each
architecture's `load_arch_tensors` in llama.cpp (src/models/<arch>.cpp); shapes
are written here in ggml order (innermost first) like llama.cpp does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import gguf

# A Q8_0 block: one f16 scale, then 32 int8 weights.
_Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])


@dataclass(frozen=True)
class ModelShape:
    name: str
    arch: str = "llama"
    n_layer: int = 8
    n_embd: int = 512
    n_head: int = 8
    n_head_kv: int | tuple[int, ...] = 2
    head_dim: int | None = None  # key/value length; None: n_embd // n_head
    n_ff: int = 1408
    n_vocab: int = 4096
    n_ctx_train: int = 4096
    weight_type: str = "q8_0"  # q8_0 | f16
    tied_output: bool = False
    # mixture of experts
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_expert_shared: int = 0
    n_ff_shexp: int = 0
    n_dense_lead: int = 0
    # sliding window: window size, and the pattern key if the file carries one
    sliding_window: int = 0
    swa_pattern: int | None = None
    # multi-head latent attention (deepseek2)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    head_dim_v: int = 0
    # state-space / linear attention (mamba2, qwen3next)
    ssm_d_conv: int = 4
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_dt_rank: int = 0
    ssm_n_group: int = 1
    full_attn_interval: int = 4
    # lfm2 short convolutions
    shortconv_l_cache: int = 3
    extra: dict = field(default_factory=dict)

    @property
    def d_head(self) -> int:
        return self.head_dim or self.n_embd // max(1, self.n_head)

    def kv_heads(self, layer: int) -> int:
        if isinstance(self.n_head_kv, tuple):
            return self.n_head_kv[layer]
        return self.n_head_kv


def _tensor(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> tuple[np.ndarray, object]:
    """Returns (data, raw_dtype); shape is in ggml order (innermost first)."""
    np_shape = tuple(reversed(shape))
    if kind in ("ones", "zeros", "neg"):
        return np.full(np_shape, {"ones": 1.0, "zeros": 0.0, "neg": -1.0}[kind], dtype=np.float32), None
    if kind == "f32":
        return (rng.standard_normal(np_shape, dtype=np.float32) * 0.02), None
    if kind == "f16" or shape[0] % 32:
        return (rng.standard_normal(np_shape, dtype=np.float32) * 0.02).astype(np.float16), None
    n_blocks = int(np.prod(np_shape)) // 32
    blocks = np.empty(n_blocks, dtype=_Q8_0_BLOCK)
    blocks["d"] = np.float16(0.0005)
    blocks["qs"] = rng.integers(-127, 128, size=(n_blocks, 32), dtype=np.int8)
    byte_shape = (*np_shape[:-1], np_shape[-1] // 32 * _Q8_0_BLOCK.itemsize)
    return blocks.view(np.uint8).reshape(byte_shape), gguf.GGMLQuantizationType.Q8_0


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece vocabulary: specials, the 256 byte tokens, then filler words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = [f"\u2581w{i}" for i in range(n_vocab - len(tokens))]
    tokens += words
    types += [1] * len(words)
    return tokens, [0.0] * n_vocab, types


Tensors = list[tuple[str, tuple[int, ...], str]]  # name, ggml shape, kind (weight type or a fill)


def _attention(s: ModelShape, il: int, q_mult: int = 1, qk_norm: bool = False) -> Tensors:
    p, d, wt = f"blk.{il}.", s.d_head, s.weight_type
    kv = s.kv_heads(il) * d
    out = [(p + "attn_q.weight", (s.n_embd, s.n_head * d * q_mult), wt), (p + "attn_k.weight", (s.n_embd, kv), wt),
           (p + "attn_v.weight", (s.n_embd, kv), wt), (p + "attn_output.weight", (s.n_head * d, s.n_embd), wt)]
    if qk_norm:
        out += [(p + "attn_q_norm.weight", (d,), "ones"), (p + "attn_k_norm.weight", (d,), "ones")]
    return out


def _ffn(s: ModelShape, il: int, n_ff: int | None = None) -> Tensors:
    p, ff, wt = f"blk.{il}.", n_ff or s.n_ff, s.weight_type
    return [(p + "ffn_gate.weight", (s.n_embd, ff), wt), (p + "ffn_up.weight", (s.n_embd, ff), wt),
            (p + "ffn_down.weight", (ff, s.n_embd), wt)]


def _experts(s: ModelShape, il: int, bias: bool = False) -> Tensors:
    p, e, ff, wt = f"blk.{il}.", s.n_expert, s.n_ff_exp, s.weight_type
    out = [(p + "ffn_gate_inp.weight", (s.n_embd, e), "f32"), (p + "ffn_gate_exps.weight", (s.n_embd, ff, e), wt),
           (p + "ffn_up_exps.weight", (s.n_embd, ff, e), wt), (p + "ffn_down_exps.weight", (ff, s.n_embd, e), wt)]
    if bias:
        out += [(p + "ffn_gate_inp.bias", (e,), "zeros"), (p + "ffn_gate_exps.bias", (ff, e), "zeros"),
                (p + "ffn_up_exps.bias", (ff, e), "zeros"), (p + "ffn_down_exps.bias", (s.n_embd, e), "zeros")]
    return out


def _shared_experts(s: ModelShape, il: int, n_ff: int) -> Tensors:
    p, wt = f"blk.{il}.", s.weight_type
    return [(p + "ffn_gate_shexp.weight", (s.n_embd, n_ff), wt), (p + "ffn_up_shexp.weight", (s.n_embd, n_ff), wt),
            (p + "ffn_down_shexp.weight", (n_ff, s.n_embd), wt)]


def _norm(il: int, *names: str, size: int) -> Tensors:
    return [(f"blk.{il}.{n}.weight", (size,), "ones") for n in names]


def _layer(s: ModelShape, il: int) -> Tensors:
    """One repeating block of the architecture."""
    e, a = s.n_embd, s.arch
    if a == "llama":
        return _norm(il, "attn_norm", "ffn_norm", size=e) + _attention(s, il) + _ffn(s, il)
    if a == "qwen3":
        return _norm(il, "attn_norm", "ffn_norm", size=e) + _attention(s, il, qk_norm=True) + _ffn(s, il)
    if a == "qwen3moe":
        return _norm(il, "attn_norm", "ffn_norm", size=e) + _attention(s, il, qk_norm=True) + _experts(s, il)
    if a == "gemma3":
        return (_norm(il, "attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm", size=e)
                + _attention(s, il, qk_norm=True) + _ffn(s, il))
    if a == "gpt-oss":
        p = f"blk.{il}."
        return (_norm(il, "attn_norm", "post_attention_norm", size=e) + _attention(s, il)
                + [(p + "attn_output.bias", (e,), "zeros"), (p + "attn_sinks.weight", (s.n_head,), "zeros")]
                + _experts(s, il, bias=True))
    if a == "deepseek2":
        return _mla_layer(s, il)
    if a == "qwen3next":
        return _qwen3next_layer(s, il)
    if a == "lfm2":
        p, wt = f"blk.{il}.", s.weight_type
        if s.kv_heads(il) == 0:  # short-convolution block
            mix = [(p + "shortconv.conv.weight", (s.shortconv_l_cache, e), "f32"),
                   (p + "shortconv.in_proj.weight", (e, 3 * e), wt), (p + "shortconv.out_proj.weight", (e, e), wt)]
        else:
            mix = _attention(s, il, qk_norm=True)
        return _norm(il, "attn_norm", "ffn_norm", size=e) + mix + _ffn(s, il)
    if a == "mamba2":
        p, wt = f"blk.{il}.", s.weight_type
        d_inner, n_group, d_state, dt_rank = s.ssm_d_inner, s.ssm_n_group, s.ssm_d_state, s.ssm_dt_rank
        conv_dim = d_inner + 2 * n_group * d_state
        return _norm(il, "attn_norm", size=e) + [
            (p + "ssm_in.weight", (e, d_inner + conv_dim + dt_rank), wt),
            (p + "ssm_conv1d.weight", (s.ssm_d_conv, conv_dim), "f32"), (p + "ssm_conv1d.bias", (conv_dim,), "zeros"),
            (p + "ssm_dt.bias", (dt_rank,), "zeros"), (p + "ssm_a", (1, dt_rank), "neg"), (p + "ssm_d", (1, dt_rank), "ones"),
            (p + "ssm_norm.weight", (d_inner // n_group, n_group), "ones"), (p + "ssm_out.weight", (d_inner, e), wt)]
    raise ValueError(f"no synthetic layout for architecture {a}")


def _mla_layer(s: ModelShape, il: int) -> Tensors:
    p, e, wt, h = f"blk.{il}.", s.n_embd, s.weight_type, s.n_head
    k_mla, v_mla, rope, kv_rank = s.d_head, s.head_dim_v, s.rope_dim, s.kv_lora_rank
    out = _norm(il, "attn_norm", "ffn_norm", size=e) + _norm(il, "attn_kv_a_norm", size=kv_rank)
    if s.q_lora_rank:
        out += _norm(il, "attn_q_a_norm", size=s.q_lora_rank)
        out += [(p + "attn_q_a.weight", (e, s.q_lora_rank), wt), (p + "attn_q_b.weight", (s.q_lora_rank, h * k_mla), wt)]
    else:
        out += [(p + "attn_q.weight", (e, h * k_mla), wt)]
    out += [(p + "attn_kv_a_mqa.weight", (e, kv_rank + rope), wt),
            (p + "attn_k_b.weight", (k_mla - rope, kv_rank, h), "f16"),
            (p + "attn_v_b.weight", (kv_rank, v_mla, h), "f16"), (p + "attn_output.weight", (h * v_mla, e), wt)]
    if il < s.n_dense_lead:
        return out + _ffn(s, il)
    return out + _experts(s, il) + _shared_experts(s, il, s.n_ff_exp * s.n_expert_shared)


def _qwen3next_layer(s: ModelShape, il: int) -> Tensors:
    p, e, wt = f"blk.{il}.", s.n_embd, s.weight_type
    out = _norm(il, "attn_norm", "post_attention_norm", size=e)
    if (il + 1) % s.full_attn_interval == 0:
        out += _attention(s, il, q_mult=2, qk_norm=True)
    else:
        key_dim, value_dim = s.ssm_d_state * s.ssm_n_group, s.ssm_d_state * s.ssm_dt_rank
        conv_dim = 2 * key_dim + value_dim
        out += [(p + "attn_qkv.weight", (e, conv_dim), wt), (p + "attn_gate.weight", (e, value_dim), wt),
                (p + "ssm_conv1d.weight", (s.ssm_d_conv, conv_dim), "f32"), (p + "ssm_dt.bias", (s.ssm_dt_rank,), "zeros"),
                (p + "ssm_a", (s.ssm_dt_rank,), "neg"), (p + "ssm_ba.weight", (e, 2 * s.ssm_dt_rank), wt),
                (p + "ssm_norm.weight", (s.ssm_d_state,), "ones"), (p + "ssm_out.weight", (value_dim, e), wt)]
    out += _experts(s, il) + [(p + "ffn_gate_inp_shexp.weight", (e,), "f32")]
    return out + _shared_experts(s, il, s.n_ff_shexp)


def _metadata(w: gguf.GGUFWriter, s: ModelShape, tokenizer: bool = True) -> None:
    a, k = s.arch, gguf.Keys
    w.add_name(s.name)
    w.add_block_count(s.n_layer)
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    if isinstance(s.n_head_kv, tuple):
        w.add_array(k.Attention.HEAD_COUNT_KV.format(arch=a), list(s.n_head_kv))
    elif s.n_head:
        w.add_head_count_kv(s.n_head_kv)
    if s.arch == "deepseek2":  # MLA: the cache holds the compressed latent plus the rope part
        w.add_key_length(s.kv_lora_rank + s.rope_dim)
        w.add_value_length(s.kv_lora_rank)
        w.add_key_length_mla(s.d_head)
        w.add_value_length_mla(s.head_dim_v)
        w.add_kv_lora_rank(s.kv_lora_rank)
        if s.q_lora_rank:
            w.add_q_lora_rank(s.q_lora_rank)
        w.add_rope_dimension_count(s.rope_dim)
        w.add_leading_dense_block_count(s.n_dense_lead)
        w.add_expert_shared_count(s.n_expert_shared)
    elif s.n_head:
        if s.head_dim:
            w.add_key_length(s.d_head)
            w.add_value_length(s.d_head)
        w.add_rope_dimension_count(s.d_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(s.n_vocab)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.n_ff_exp)
    if s.n_ff_shexp:
        w.add_expert_shared_feed_forward_length(s.n_ff_shexp)
    if s.sliding_window:
        w.add_sliding_window(s.sliding_window)
    if s.swa_pattern is not None:
        w.add_uint32(k.Attention.SLIDING_WINDOW_PATTERN.format(arch=a), s.swa_pattern)
    if s.ssm_d_inner:
        w.add_ssm_conv_kernel(s.ssm_d_conv)
        w.add_ssm_inner_size(s.ssm_d_inner)
        w.add_ssm_state_size(s.ssm_d_state)
        w.add_ssm_time_step_rank(s.ssm_dt_rank)
        w.add_ssm_group_count(s.ssm_n_group)
    if a == "qwen3next":
        w.add_full_attention_interval(s.full_attn_interval)
    if a == "lfm2":
        w.add_shortconv_l_cache(s.shortconv_l_cache)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if s.weight_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    if not tokenizer:
        return
    tokens, scores, types = _vocab(s.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")


def write_gguf(path: Path, shape: ModelShape, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), shape.arch)
    _metadata(w, shape)
    tensors = _model_tensors(shape)
    return _finish(w, rng, tensors, path)


# The shapes the accuracy tests and bench/plan_accuracy.py run, chosen to differ
# in what the memory arithmetic depends on.
TEST_SHAPES = (
    ModelShape("gqa-q8", n_layer=8, n_embd=512, n_head=8, n_head_kv=2, n_ff=1408),
    ModelShape("mha-f16-tied", n_layer=6, n_embd=384, n_head=6, n_head_kv=6, n_ff=1024,
               weight_type="f16", tied_output=True, n_vocab=3072),
    ModelShape("hd128-q8", n_layer=10, n_embd=512, n_head=8, n_head_kv=1, head_dim=128, n_ff=1536,
               n_vocab=8192),
    ModelShape("hd32-f16", n_layer=12, n_embd=512, n_head=16, n_head_kv=4, head_dim=32, n_ff=1024,
               weight_type="f16", n_vocab=6144),
)

# Small models of the architectures people run beyond llama shapes: what the
# planner's KV, recurrent-state and compute arithmetic must get right.
ARCH_SHAPES = (
    ModelShape("qwen3", arch="qwen3", n_layer=8, n_embd=512, n_head=8, n_head_kv=2, head_dim=128, n_ff=1536,
               n_ctx_train=40960),
    ModelShape("qwen3moe", arch="qwen3moe", n_layer=6, n_embd=512, n_head=8, n_head_kv=4, head_dim=64, n_ff=1536,
               n_expert=16, n_expert_used=4, n_ff_exp=256, n_ctx_train=32768),
    ModelShape("gemma3", arch="gemma3", n_layer=12, n_embd=512, n_head=4, n_head_kv=1, head_dim=256, n_ff=2048,
               sliding_window=512, tied_output=True, n_vocab=16384, n_ctx_train=32768),
    ModelShape("gpt-oss", arch="gpt-oss", n_layer=6, n_embd=512, n_head=8, n_head_kv=2, head_dim=64, n_ff=1024,
               n_expert=8, n_expert_used=4, n_ff_exp=512, sliding_window=128, n_ctx_train=131072),
    ModelShape("deepseek2", arch="deepseek2", n_layer=5, n_embd=512, n_head=8, n_head_kv=1, head_dim=96,
               head_dim_v=64, n_ff=1536, n_expert=8, n_expert_used=2, n_ff_exp=256, n_expert_shared=1,
               n_dense_lead=1, q_lora_rank=192, kv_lora_rank=128, rope_dim=32, n_ctx_train=163840),
    ModelShape("qwen3next", arch="qwen3next", n_layer=8, n_embd=512, n_head=8, n_head_kv=2, head_dim=64, n_ff=1024,
               n_expert=8, n_expert_used=2, n_ff_exp=256, n_ff_shexp=256, ssm_d_conv=4, ssm_d_inner=512,
               ssm_d_state=64, ssm_dt_rank=8, ssm_n_group=4, n_ctx_train=262144),
    ModelShape("lfm2", arch="lfm2", n_layer=10, n_embd=512, n_head=8,
               n_head_kv=(0, 0, 2, 0, 0, 2, 0, 0, 2, 0), n_ff=1536, tied_output=True, n_ctx_train=128000),
    ModelShape("mamba2", arch="mamba2", n_layer=8, n_embd=512, n_head=0, n_head_kv=0, n_ff=0, ssm_d_conv=4,
               ssm_d_inner=1024, ssm_d_state=64, ssm_dt_rank=16, ssm_n_group=1, n_ctx_train=1048576),
)

# The 16-layer model of DESIGN.md's speed measurements (192 MB, GQA 16/4, Q8_0).
SPEED_SHAPE = ModelShape("speed-16l", n_layer=16, n_embd=1024, n_head=16, n_head_kv=4, n_ff=2816, n_vocab=32000)


TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.chat_template")


def write_gguf_with_vocab(path: Path, shape: ModelShape, vocab_from: Path, seed: int = 0) -> Path:
    """A random-weight model that speaks another model's tokens (its tokenizer copied): a target for
    that model as speculative draft."""
    src = gguf.GGUFReader(vocab_from)
    fields = {k: src.get_field(k) for k in TOKENIZER_KEYS if src.get_field(k) is not None}
    n_vocab = len(fields["tokenizer.ggml.tokens"].data)
    shape = ModelShape(**{**shape.__dict__, "n_vocab": n_vocab})
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), shape.arch)
    _metadata(w, shape, tokenizer=False)
    for key, fld in fields.items():
        value = fld.contents()
        kind = fld.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_array(key, value)
        elif kind == gguf.GGUFValueType.STRING:
            w.add_string(key, value)
        else:
            w.add_uint32(key, int(value))
    tensors = _model_tensors(replace(shape, tied_output=False))
    return _finish(w, rng, tensors, path)


def _model_tensors(shape: ModelShape) -> Tensors:
    e, wt = shape.n_embd, shape.weight_type
    tensors: Tensors = [("token_embd.weight", (e, shape.n_vocab), wt)]
    for il in range(shape.n_layer):
        tensors += _layer(shape, il)
    tensors.append(("token_embd_norm.weight" if shape.arch == "lfm2" else "output_norm.weight", (e,), "ones"))
    if not shape.tied_output:
        tensors.append(("output.weight", (e, shape.n_vocab), wt))
    return tensors


def _finish(w: gguf.GGUFWriter, rng, tensors: Tensors, path: Path) -> Path:  # noqa: ANN001
    for name, dims, kind in tensors:
        data, raw = _tensor(rng, dims, kind)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_lora(path: Path, base: Path, rank: int = 8, targets: tuple[str, ...] = ("attn_q", "attn_v"),
               layers: range | None = None, scale: float = 0.5, seed: int = 0, arch: str | None = None) -> Path:
    """A LoRA adapter in llama.cpp's GGUF form (what convert_lora_to_gguf.py writes) for the model at
    base: lora_a [in, rank] and lora_b [rank, out] in ggml order, f32, random, for the named
    projections of the given layers (default: all)."""
    rng = np.random.default_rng(seed)
    src = gguf.GGUFReader(base)
    model_arch = arch or str(bytes(src.get_field("general.architecture").parts[-1]), "utf-8")
    shapes = {t.name: [int(x) for x in t.shape] for t in src.tensors}
    n_layer = 1 + max(int(n.split(".")[1]) for n in shapes if n.startswith("blk."))
    w = gguf.GGUFWriter(str(path), model_arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for il in layers if layers is not None else range(n_layer):
        for t in targets:
            name = f"blk.{il}.{t}.weight"
            ne0, ne1 = shapes[name][:2]
            # numpy shapes are ggml's reversed: a is ne [ne0, rank], b is ne [rank, ne1]
            w.add_tensor(f"{name}.lora_a", (rng.standard_normal((rank, ne0)) * scale).astype(np.float32))
            w.add_tensor(f"{name}.lora_b", (rng.standard_normal((ne1, rank)) * scale).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
