"""Header-only GGUFs of real models' shapes: the header and tensor table as the real file has
them, the data region a hole (a sparse file), so a 22 GB model costs a few KB of disk. The
planner reads headers only, so it plans these exactly as it plans the real files."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType


def write_sparse_gguf(path: Path, arch: str, kv: dict, tensors: list[tuple[str, tuple[int, ...], Q]],
                      n_vocab: int = 0) -> Path:
    """kv: `{arch}.` keys (without the prefix) and general.* keys; tensors: (name, ggml shape, type)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        full = key if key.startswith(("general.", "clip.", "tokenizer.")) else f"{arch}.{key}"
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        elif isinstance(value, float):
            w.add_float32(full, value)
        elif isinstance(value, str):
            w.add_string(full, value)
        else:
            w.add_array(full, value)
    if n_vocab:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(n_vocab)])
    for name, shape, qtype in tensors:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(shape))
        byte_shape = (*reversed(shape[1:]), shape[0] // block * size)
        w.add_tensor_info(name, byte_shape, np.uint8, n * size // block, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    from hydra_compose.modelfacts.gguf_facts import HeaderReader, TruncatedError

    try:
        HeaderReader(path)
    except TruncatedError as exc:
        os.truncate(path, exc.need)
    return path


def qwen3_vl_30b_a3b(path: Path) -> Path:
    """Qwen3-VL-30B-A3B-Instruct Q5_K_M (seed 004's model): 48 layers, 128 experts (8 active)."""
    e, ff_exp, n_exp, heads, kv_heads, d = 2048, 768, 128, 32, 4, 128
    tensors = [("token_embd.weight", (e, 151936), Q.Q5_K), ("output_norm.weight", (e,), Q.F32),
               ("output.weight", (e, 151936), Q.Q6_K)]
    for il in range(48):
        p = f"blk.{il}."
        tensors += [(p + "attn_norm.weight", (e,), Q.F32), (p + "ffn_norm.weight", (e,), Q.F32),
                    (p + "attn_q.weight", (e, heads * d), Q.Q5_K), (p + "attn_k.weight", (e, kv_heads * d), Q.Q5_K),
                    (p + "attn_v.weight", (e, kv_heads * d), Q.Q6_K), (p + "attn_output.weight", (heads * d, e), Q.Q5_K),
                    (p + "attn_q_norm.weight", (d,), Q.F32), (p + "attn_k_norm.weight", (d,), Q.F32),
                    (p + "ffn_gate_inp.weight", (e, n_exp), Q.F32),
                    (p + "ffn_gate_exps.weight", (e, ff_exp, n_exp), Q.Q5_K),
                    (p + "ffn_up_exps.weight", (e, ff_exp, n_exp), Q.Q5_K),
                    (p + "ffn_down_exps.weight", (ff_exp, e, n_exp), Q.Q6_K)]
    kv = {"block_count": 48, "context_length": 262144, "embedding_length": e, "feed_forward_length": 6144,
          "attention.head_count": heads, "attention.head_count_kv": kv_heads, "attention.key_length": d,
          "attention.value_length": d, "expert_count": n_exp, "expert_used_count": 8,
          "expert_feed_forward_length": ff_exp, "general.file_type": int(gguf.LlamaFileType.MOSTLY_Q5_K_M),
          "general.name": "Qwen3-VL-30B-A3B-Instruct"}
    return write_sparse_gguf(path, "qwen3vlmoe", kv, tensors, n_vocab=151936)


def qwen3_vl_mmproj(path: Path) -> Path:
    """Its vision projector (mmproj f16): 27 blocks of width 1152."""
    e, ff = 1152, 4304
    tensors = [("v.patch_embd.weight", (16, 16, 3, e), Q.F16), ("v.position_embd.weight", (e, 2304), Q.F16)]
    for il in range(27):
        p = f"v.blk.{il}."
        tensors += [(p + "attn_qkv.weight", (e, 3 * e), Q.F16), (p + "attn_out.weight", (e, e), Q.F16),
                    (p + "ffn_up.weight", (e, ff), Q.F16), (p + "ffn_down.weight", (ff, e), Q.F16),
                    (p + "ln1.weight", (e,), Q.F32), (p + "ln2.weight", (e,), Q.F32)]
    tensors += [("mm.0.weight", (4 * e, 4 * e), Q.F16), ("mm.2.weight", (4 * e, 2048), Q.F16)]
    kv = {"general.architecture": "clip", "clip.has_vision_encoder": True, "clip.vision.image_size": 768,
          "clip.vision.patch_size": 16, "clip.vision.embedding_length": e, "clip.vision.feed_forward_length": ff,
          "clip.vision.block_count": 27}
    return write_sparse_gguf(path, "clip", kv, tensors)
