"""How long do `models` and `plan` take on a 36 GB GGUF with a 152k vocabulary?

Writes a sparse file (real header: vocabulary, merges-sized string arrays, 64
layers of q8_0 tensor infos; the data region is a hole), then times our header
read, gguf's stock GGUFReader, and the `hydra-compose models` / `plan` commands.
Usage: python bench/header_speed.py
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

from hydra_compose.modelfacts.gguf_facts import read_model

N_LAYER, N_EMBD, N_FF, N_VOCAB, N_HEAD, N_KV = 64, 5120, 27648, 152_064, 40, 8


def write_sparse(path: Path) -> int:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(N_LAYER)
    w.add_context_length(32768)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(N_VOCAB)])
    w.add_token_types([1] * N_VOCAB)
    w.add_token_merges([f"a{i} b{i}" for i in range(N_VOCAB)])
    q8 = gguf.GGMLQuantizationType.Q8_0
    hd = N_EMBD // N_HEAD

    def info(name: str, shape: tuple[int, ...], dtype=q8) -> None:  # noqa: ANN001
        block, size = gguf.GGML_QUANT_SIZES[dtype]
        n = int(np.prod(shape))
        stored = (*shape[:-1], shape[-1] // block * size) if dtype == q8 else shape  # gguf wants byte shapes
        w.add_tensor_info(name, stored, np.uint8 if dtype == q8 else np.float32, n * size // block, raw_dtype=dtype)

    info("token_embd.weight", (N_VOCAB, N_EMBD))
    for il in range(N_LAYER):
        p = f"blk.{il}."
        info(p + "attn_norm.weight", (N_EMBD,), gguf.GGMLQuantizationType.F32)
        info(p + "attn_q.weight", (N_EMBD, N_EMBD))
        info(p + "attn_k.weight", (N_KV * hd, N_EMBD))
        info(p + "attn_v.weight", (N_KV * hd, N_EMBD))
        info(p + "attn_output.weight", (N_EMBD, N_EMBD))
        info(p + "ffn_norm.weight", (N_EMBD,), gguf.GGMLQuantizationType.F32)
        info(p + "ffn_gate.weight", (N_FF, N_EMBD))
        info(p + "ffn_up.weight", (N_FF, N_EMBD))
        info(p + "ffn_down.weight", (N_EMBD, N_FF))
    info("output_norm.weight", (N_EMBD,), gguf.GGMLQuantizationType.F32)
    info("output.weight", (N_VOCAB, N_EMBD))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    reader_end = read_model_end(path)
    os.truncate(path, reader_end)
    return reader_end


def read_model_end(path: Path) -> int:
    """Where the data region must end: header length + padded tensor bytes (gguf's own layout)."""
    from hydra_compose.modelfacts.gguf_facts import HeaderReader, TruncatedError

    try:
        HeaderReader(path)
    except TruncatedError as exc:
        return exc.need
    return path.stat().st_size


def timed(fn) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="header-speed-"))
    (work / "models").mkdir()
    path = work / "models" / "big.gguf"
    size = write_sparse(path)
    (work / "cluster.yaml").write_text(
        "master: {host: a}\nhosts:\n  - name: a\n    address: 127.0.0.1\n    devices:\n"
        "      - {vendor: cpu, memory_gb: 64, threads: 8}\nmodels:\n  big: {file: big.gguf, ctx: 8192}\n")
    print(f"file: {size / 1e9:.1f} GB (sparse), {N_LAYER} layers, vocabulary {N_VOCAB}")
    t_ours, facts = timed(lambda: read_model(path))
    print(f"hydra header read:          {t_ours:6.3f} s  ({facts.n_params / 1e9:.1f} B params)")
    t_stock, _ = timed(lambda: gguf.GGUFReader(path))
    print(f"gguf.GGUFReader (stock):    {t_stock:6.3f} s")
    for args in (["models"], ["plan"], ["--help"]):
        t, r = timed(lambda: subprocess.run(["hydra-compose", *args], cwd=work, capture_output=True, text=True))
        assert r.returncode == 0, r.stderr
        print(f"hydra-compose {' '.join(args):12} {t:6.3f} s (whole process)")
    path.unlink()


if __name__ == "__main__":
    main()
