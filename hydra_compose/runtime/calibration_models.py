"""The models `calibrate` measures devices with: random Q8_0 weights in llama.cpp's llama (dense)
and qwen3moe (MoE) layouts, written with the gguf package. Two dense sizes give a device's decode
rate (the slope) and its fixed per-token cost (the intercept); the MoE model its expert rate.
The text they produce is nonsense; only the time matters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])
N_EMBD, N_HEAD, N_KV, N_FF, N_VOCAB = 1024, 16, 4, 2816, 4096
N_EXPERT, N_EXPERT_USED, N_FF_EXP = 16, 4, 704


@dataclass(frozen=True)
class CalibrationModel:
    name: str
    n_layer: int
    moe: bool = False


MODELS = (CalibrationModel("dense-small", 8), CalibrationModel("dense-large", 24), CalibrationModel("moe", 4, moe=True))


def _q8(rng: np.random.Generator, cols: int, rows: int, *more: int) -> np.ndarray:
    n = cols * rows * int(np.prod(more or (1,)))
    blocks = np.empty(n // 32, dtype=Q8_0)
    blocks["d"] = np.float16(0.0005)
    blocks["qs"] = rng.integers(-127, 128, size=(n // 32, 32), dtype=np.int8)
    shape = (*reversed(more), rows, cols // 32 * Q8_0.itemsize)
    return blocks.view(np.uint8).reshape(shape)


def write_model(path: Path, model: CalibrationModel) -> Path:
    rng = np.random.default_rng(7)
    arch = "qwen3moe" if model.moe else "llama"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(model.n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    if model.moe:
        w.add_expert_count(N_EXPERT)
        w.add_expert_used_count(N_EXPERT_USED)
        w.add_expert_feed_forward_length(N_FF_EXP)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(N_VOCAB - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * N_VOCAB)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    q8 = gguf.GGMLQuantizationType.Q8_0
    ones = np.ones(N_EMBD, dtype=np.float32)
    d = N_EMBD // N_HEAD
    w.add_tensor("token_embd.weight", _q8(rng, N_EMBD, N_VOCAB), raw_dtype=q8)
    for il in range(model.n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", _q8(rng, N_EMBD, N_HEAD * d), raw_dtype=q8)
        w.add_tensor(p + "attn_k.weight", _q8(rng, N_EMBD, N_KV * d), raw_dtype=q8)
        w.add_tensor(p + "attn_v.weight", _q8(rng, N_EMBD, N_KV * d), raw_dtype=q8)
        w.add_tensor(p + "attn_output.weight", _q8(rng, N_HEAD * d, N_EMBD), raw_dtype=q8)
        if model.moe:
            w.add_tensor(p + "attn_q_norm.weight", np.ones(d, dtype=np.float32))
            w.add_tensor(p + "attn_k_norm.weight", np.ones(d, dtype=np.float32))
            w.add_tensor(p + "ffn_gate_inp.weight", rng.standard_normal((N_EXPERT, N_EMBD), dtype=np.float32) * 0.02)
            w.add_tensor(p + "ffn_gate_exps.weight", _q8(rng, N_EMBD, N_FF_EXP, N_EXPERT), raw_dtype=q8)
            w.add_tensor(p + "ffn_up_exps.weight", _q8(rng, N_EMBD, N_FF_EXP, N_EXPERT), raw_dtype=q8)
            w.add_tensor(p + "ffn_down_exps.weight", _q8(rng, N_FF_EXP, N_EMBD, N_EXPERT), raw_dtype=q8)
        else:
            w.add_tensor(p + "ffn_gate.weight", _q8(rng, N_EMBD, N_FF), raw_dtype=q8)
            w.add_tensor(p + "ffn_up.weight", _q8(rng, N_EMBD, N_FF), raw_dtype=q8)
            w.add_tensor(p + "ffn_down.weight", _q8(rng, N_FF, N_EMBD), raw_dtype=q8)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", _q8(rng, N_EMBD, N_VOCAB), raw_dtype=q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_models(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {m.name: write_model(folder / f"{m.name}.gguf", m) for m in MODELS}
