"""Random-weight GGUF files of any llama shape, for tests and benchmarks.

llama.cpp loads and runs them like a real model (the text is nonsense), so the
planner's memory arithmetic and the split speed can be checked against the real
llama-server without downloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import gguf

# A Q8_0 block: one f16 scale, then 32 int8 weights.
_Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])


@dataclass(frozen=True)
class LlamaShape:
    name: str
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
    extra: dict = field(default_factory=dict)

    def kv_heads(self, layer: int) -> int:
        if isinstance(self.n_head_kv, tuple):
            return self.n_head_kv[layer]
        return self.n_head_kv


def _tensor(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> tuple[np.ndarray, object]:
    """Returns (data, raw_dtype); shape is numpy order (outermost first)."""
    if kind == "f32":
        return np.ones(shape, dtype=np.float32), None
    if kind == "f16":
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16), None
    n_blocks = int(np.prod(shape)) // 32
    blocks = np.empty(n_blocks, dtype=_Q8_0_BLOCK)
    blocks["d"] = np.float16(0.0005)
    blocks["qs"] = rng.integers(-127, 128, size=(n_blocks, 32), dtype=np.int8)
    byte_shape = (*shape[:-1], shape[-1] // 32 * _Q8_0_BLOCK.itemsize)
    return blocks.view(np.uint8).reshape(byte_shape), gguf.GGMLQuantizationType.Q8_0


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece vocabulary: specials, the 256 byte tokens, then filler words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = [f"\u2581w{i}" for i in range(n_vocab - len(tokens))]
    tokens += words
    types += [1] * len(words)
    return tokens, [0.0] * n_vocab, types


def write_llama_gguf(path: Path, shape: LlamaShape, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    head_dim = shape.head_dim or shape.n_embd // shape.n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(shape.name)
    w.add_block_count(shape.n_layer)
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    if isinstance(shape.n_head_kv, tuple):
        w.add_array(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch="llama"), list(shape.n_head_kv))
    else:
        w.add_head_count_kv(shape.n_head_kv)
    if shape.head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(shape.n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if shape.weight_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = _vocab(shape.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    )

    def add(name: str, shape_: tuple[int, ...], kind: str) -> None:
        data, raw = _tensor(rng, shape_, kind)
        w.add_tensor(name, data, raw_dtype=raw)

    wt = shape.weight_type
    add("token_embd.weight", (shape.n_vocab, shape.n_embd), wt)
    for il in range(shape.n_layer):
        kv = shape.kv_heads(il) * head_dim
        p = f"blk.{il}."
        add(p + "attn_norm.weight", (shape.n_embd,), "f32")
        add(p + "attn_q.weight", (shape.n_head * head_dim, shape.n_embd), wt)
        add(p + "attn_k.weight", (kv, shape.n_embd), wt)
        add(p + "attn_v.weight", (kv, shape.n_embd), wt)
        add(p + "attn_output.weight", (shape.n_embd, shape.n_head * head_dim), wt)
        add(p + "ffn_norm.weight", (shape.n_embd,), "f32")
        add(p + "ffn_gate.weight", (shape.n_ff, shape.n_embd), wt)
        add(p + "ffn_up.weight", (shape.n_ff, shape.n_embd), wt)
        add(p + "ffn_down.weight", (shape.n_embd, shape.n_ff), wt)
    add("output_norm.weight", (shape.n_embd,), "f32")
    if not shape.tied_output:
        add("output.weight", (shape.n_vocab, shape.n_embd), wt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# The shapes the accuracy tests and bench/plan_accuracy.py run, chosen to differ
# in what the memory arithmetic depends on.
TEST_SHAPES = (
    LlamaShape("gqa-q8", n_layer=8, n_embd=512, n_head=8, n_head_kv=2, n_ff=1408),
    LlamaShape("mha-f16-tied", n_layer=6, n_embd=384, n_head=6, n_head_kv=6, n_ff=1024,
               weight_type="f16", tied_output=True, n_vocab=3072),
    LlamaShape("hd128-q8", n_layer=10, n_embd=512, n_head=8, n_head_kv=1, head_dim=128, n_ff=1536,
               n_vocab=8192),
    LlamaShape("hd32-f16", n_layer=12, n_embd=512, n_head=16, n_head_kv=4, head_dim=32, n_ff=1024,
               weight_type="f16", n_vocab=6144),
)

# The 16-layer model of DESIGN.md's speed measurements (192 MB, GQA 16/4, Q8_0).
SPEED_SHAPE = LlamaShape("speed-16l", n_layer=16, n_embd=1024, n_head=16, n_head_kv=4, n_ff=2816,
                         n_vocab=32000)
