"""Planner rules beyond llama shapes, without llama.cpp: SWA, MLA, recurrent state,
MoE experts in host RAM, projectors, reserves and split: all."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from hydra_compose.inventory.config import ClusterConfig
from hydra_compose.errors import PlanError
from hydra_compose.modelfacts.gguf_facts import read_model, read_projector
from hydra_compose.planner.memory import CacheOptions, layer_kv_bytes, layer_state_bytes
from hydra_compose.planner.plan import PlanOptions, expert_override, make_plan

MiB = 1024 * 1024


def cpu_cluster(*memory_gb: float, threads: tuple[int, ...] = (), master: dict | None = None,
                host: dict | None = None) -> ClusterConfig:
    devices = [{"vendor": "cpu", "memory_gb": gb, "threads": (threads[i] if threads else 1), "rpc_port": 50052 + i}
               for i, gb in enumerate(memory_gb)]
    return ClusterConfig.model_validate({"master": {"host": "local", **(master or {})}, "hosts": [
        {"name": "local", "address": "127.0.0.1", "devices": devices, **(host or {})}]})


def test_layer_kinds_of_real_architectures(model_dir):
    kinds = {name: read_model(model_dir / f"{name}.gguf").kinds() for name in
             ("qwen3", "gemma3", "gpt-oss", "deepseek2", "qwen3next", "lfm2", "mamba2")}
    assert kinds["qwen3"] == {"full": 8}
    assert kinds["gemma3"] == {"swa": 10, "full": 2}  # every 6th layer is full attention
    assert kinds["gpt-oss"] == {"swa": 3, "full": 3}  # alternating
    assert kinds["qwen3next"] == {"recurrent": 6, "full": 2}  # every 4th layer attends
    assert kinds["lfm2"] == {"recurrent": 7, "full": 3}  # convolution blocks have no KV heads
    assert kinds["mamba2"] == {"recurrent": 8}


def test_swa_layers_cache_only_the_window(model_dir):
    m = read_model(model_dir / "gemma3.gguf")
    o = CacheOptions(ctx_slot=32768, n_seq=2)
    swa = [il for il, layer in enumerate(m.layers) if layer.kind == "swa"]
    full = [il for il, layer in enumerate(m.layers) if layer.kind == "full"]
    # window 512 + ubatch 512 = 1024 cells per slot instead of 32768
    assert layer_kv_bytes(m, swa[0], o) * 32 == layer_kv_bytes(m, full[0], o)


def test_mla_caches_k_only_and_needs_equal_types(model_dir):
    m = read_model(model_dir / "deepseek2.gguf")
    assert m.mla and all(layer.v_elems == 0 and layer.k_elems == 128 + 32 for layer in m.layers)
    with pytest.raises(PlanError, match="same K and V cache type"):
        make_plan(cpu_cluster(2), m, PlanOptions(cache_type_k="q8_0", cache_type_v="f16"))


def test_recurrent_state_is_per_slot_and_not_per_token(model_dir):
    m = read_model(model_dir / "mamba2.gguf")
    small, big = CacheOptions(1024, 2), CacheOptions(65536, 2)
    assert layer_kv_bytes(m, 0, big) == 0
    assert layer_state_bytes(m, 0, small) == layer_state_bytes(m, 0, big) == m.state_elems * 4 * 2


def test_pure_recurrent_model_is_planned_to_its_trained_context(model_dir):
    m = read_model(model_dir / "mamba2.gguf")
    plan = make_plan(cpu_cluster(0.5), m, PlanOptions())
    assert plan.ctx == m.n_ctx_train and plan.devices[0].kv_bytes == 0 and plan.devices[0].state_bytes > 0


def test_split_all_uses_every_device_of_different_speed(model_dir):
    # the search once capped its used-device count at 2: three unequal workers failed
    m = read_model(model_dir / "qwen3.gguf")
    plan = make_plan(cpu_cluster(1, 1, 1, threads=(1, 2, 4)), m, PlanOptions(ctx=4096, split="all"))
    assert len(plan.devices) == 3 and all(d.n_items > 0 for d in plan.devices) and not plan.left_out
    assert sum(plan.tensor_split) == m.n_layer + 1


def test_more_devices_than_layers_is_a_clear_error(model_dir):
    m = read_model(model_dir / "deepseek2.gguf")  # 5 layers + output
    with pytest.raises(PlanError, match="layer per device"):
        make_plan(cpu_cluster(*[1] * 7), m, PlanOptions(ctx=1024, split="all"))


def test_gpu_reserve_defaults_to_a_gib_and_cpu_to_none():
    cfg = ClusterConfig.model_validate({"master": {"host": "a"}, "hosts": [{"name": "a", "address": "10.0.0.2", "devices": [
        {"vendor": "nvidia", "arch": "sm_89", "vram_gb": 16, "index": 0},
        {"vendor": "nvidia", "arch": "sm_61", "vram_gb": 2, "index": 1},
        {"vendor": "amd", "arch": "gfx1100", "vram_gb": 24, "index": 0, "reserve_gb": 0.25},
        {"vendor": "cpu", "memory_gb": 8}]}]})
    assert [d.reserve for d in cfg.hosts[0].devices] == [1.0, 0.5, 0.25, 0.0]


def test_experts_stay_on_devices_when_they_fit(model_dir):
    m = read_model(model_dir / "qwen3moe.gguf")
    plan = make_plan(cpu_cluster(1, 1), m, PlanOptions(ctx=2048))
    assert plan.experts_on_host == () and "-ot" not in plan.llama_server_args()


def test_experts_move_to_host_ram_only_as_far_as_needed(model_dir):
    m = read_model(model_dir / "qwen3moe.gguf")
    plan = make_plan(cpu_cluster(0.03, 0.03), m, PlanOptions(ctx=2048))
    assert 0 < len(plan.experts_on_host) < m.n_layer
    assert plan.experts_on_host == tuple(range(len(plan.experts_on_host)))  # the first layers, like --n-cpu-moe
    args = plan.llama_server_args()
    assert args[args.index("-ot") + 1] == expert_override(plan.experts_on_host)
    assert plan.host.expert_bytes == sum(m.layers[il].expert_bytes for il in plan.experts_on_host)
    assert any("master's RAM" in w for w in plan.warnings)
    every = make_plan(cpu_cluster(0.03, 0.03), m, PlanOptions(ctx=2048, experts="cpu"))
    assert every.experts_on_host == tuple(range(m.n_layer))


def test_expert_override_pattern_matches_only_chosen_experts():
    import re

    pattern = expert_override((0, 2, 11)).split("=")[0]
    hits = [n for n in ("blk.0.ffn_up_exps.weight", "blk.2.ffn_gate_exps.bias", "blk.11.ffn_down_exps.weight",
                        "blk.1.ffn_up_exps.weight", "blk.21.ffn_up_exps.weight", "blk.0.ffn_up_shexp.weight",
                        "blk.0.attn_q.weight") if re.search(pattern, n)]
    assert hits == ["blk.0.ffn_up_exps.weight", "blk.2.ffn_gate_exps.bias", "blk.11.ffn_down_exps.weight"]
    assert "," not in expert_override(tuple(range(60)))  # -ot separates overrides with commas


def test_experts_gpu_that_do_not_fit_suggest_auto(model_dir):
    m = read_model(model_dir / "qwen3moe.gguf")
    with pytest.raises(PlanError, match="experts: auto"):
        make_plan(cpu_cluster(0.03, 0.03), m, PlanOptions(experts="gpu"))


def test_master_ram_shortfall_names_the_host(model_dir):
    m = read_model(model_dir / "qwen3moe.gguf")
    with pytest.raises(PlanError, match="master host local needs"):
        make_plan(cpu_cluster(0.03, 0.03, host={"ram_gb": 2.01}, master={"cache_ram_gb": 4}), m, PlanOptions(ctx=2048))


def _projector(path, n_embd=256):
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_uint32("clip.vision.image_size", 224)
    w.add_uint32("clip.vision.patch_size", 14)
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", 4 * n_embd)
    w.add_tensor("v.patch_embd.weight", np.zeros((n_embd, 3 * 14 * 14), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_projector_goes_to_the_first_worker_without_local_gpus(model_dir, tmp_path):
    proj = read_projector(_projector(tmp_path / "mmproj.gguf"))
    assert proj.weight_bytes == 256 * 3 * 14 * 14 * 2 and proj.compute_bytes > 0
    plan = make_plan(cpu_cluster(1, 1), read_model(model_dir / "qwen3.gguf"), PlanOptions(ctx=2048, split="all"),
                     proj)
    assert [d.projector_bytes for d in plan.devices] == [proj.total_bytes, 0]


def test_a_projector_is_not_a_model(tmp_path):
    from hydra_compose.errors import ModelError

    with pytest.raises(ModelError, match="vision projector"):
        read_model(_projector(tmp_path / "mmproj.gguf"))
