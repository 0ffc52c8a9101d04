"""The planner's arithmetic on hand-made model facts (no llama.cpp needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hydra_compose.inventory.config import ClusterConfig
from hydra_compose.errors import PlanError
from hydra_compose.modelfacts.gguf_facts import ModelFacts
from hydra_compose.planner.plan import CTX_STEP, PlanOptions, make_plan

GiB = 1024**3
MiB = 1024**2


def facts(n_layer=32, layer_mib=200, kv_heads=8, n_ctx_train=32768, **kw) -> ModelFacts:
    heads = kv_heads if isinstance(kv_heads, tuple) else (kv_heads,) * n_layer
    base = dict(name="m.gguf", path=Path("m.gguf"), parts=(Path("m.gguf"),), arch="llama", title="m",
                file_bytes=0, n_params=0, quant="Q4_K_M", n_layer=n_layer, n_ctx_train=n_ctx_train, n_embd=4096,
                n_head=32, n_head_kv=heads, head_dim_k=128, head_dim_v=128, n_ff=14336, n_vocab=128256,
                n_expert=0, n_expert_used=0, sliding_window=0, layer_bytes=(layer_mib * MiB,) * n_layer,
                output_bytes=500 * MiB, input_bytes=500 * MiB, tied_output=False)
    base.update(kw)
    return ModelFacts(**base)


def cluster(*devices, master_devices=()) -> ClusterConfig:
    return ClusterConfig.model_validate({"master": {"host": "m"}, "hosts": [
        {"name": "m", "address": "10.0.0.1", "devices": list(master_devices)},
        {"name": "w", "address": "10.0.0.2", "link_gbps": 10, "devices": list(devices)}]})


def gpu(name, vram, arch="sm_89", index=0, **kw):
    return {"vendor": "nvidia", "name": name, "vram_gb": vram, "arch": arch, "index": index, **kw}


def test_devices_in_llama_order_rpc_first_then_local():
    cfg = cluster(gpu("RTX 3060", 12, "sm_86", 0), master_devices=[gpu("RTX 4090", 24, "sm_89", 0)])
    plan = make_plan(cfg, facts(), PlanOptions(ctx=8192, split="all"))
    assert [d.slot.kind for d in plan.devices] == ["rpc", "local"]
    assert plan.devices[-1].has_output and plan.devices[-1].slot.id == "CUDA0"
    assert sum(plan.tensor_split) == 33
    args = plan.llama_server_args()
    assert args[:2] == ["--rpc", "127.0.1.1:50052"]  # a LAN worker host: through the TLS tunnel


def test_speed_plan_prefers_fast_device_and_leaves_slow_out():
    cfg = cluster(gpu("RTX 3060", 12, "sm_86", 0), master_devices=[gpu("RTX 4090", 24, "sm_89", 0)])
    plan = make_plan(cfg, facts(n_layer=16, layer_mib=100), PlanOptions(ctx=4096))
    assert [d.slot.id for d in plan.devices] == ["CUDA0"]
    assert plan.left_out and "left out" in plan.warnings[0]
    assert "--rpc" not in plan.llama_server_args()


def test_every_device_within_budget_and_max_ctx():
    cfg = cluster(gpu("RTX 3060", 12, "sm_86", 0), gpu("RTX 3090", 24, "sm_86", 1),
                  master_devices=[gpu("RTX 4070", 12, "sm_89", 0)])
    plan = make_plan(cfg, facts(), PlanOptions(parallel=2))
    assert plan.ctx % (CTX_STEP * 2) == 0 and plan.ctx_per_slot <= 32768
    for d in plan.devices:
        assert d.total_bytes <= d.slot.budget_bytes
    bigger = PlanOptions(ctx=plan.ctx + CTX_STEP * 2 * 8, parallel=2)
    if plan.ctx_per_slot < 32768:
        with pytest.raises(PlanError, match="short by"):
            make_plan(cfg, facts(), bigger)


def test_kv_bytes_follow_per_layer_heads_and_cache_types():
    heads = tuple(8 if i % 2 else 2 for i in range(32))
    m = facts(kv_heads=heads)
    cfg = cluster(gpu("RTX 3090", 24, "sm_86", 0))
    plan = make_plan(cfg, m, PlanOptions(ctx=4096, cache_type_k="q8_0", cache_type_v="q4_0"))
    per_token = sum(h * 128 * (34 / 32 + 18 / 32) for h in heads)
    assert plan.devices[0].kv_bytes == pytest.approx(per_token * 4096, abs=64)


def test_reserve_shrinks_budget():
    cfg = cluster(gpu("RTX 3090", 24, "sm_86", 0, reserve_gb=4))
    plan = make_plan(cfg, facts(n_layer=8), PlanOptions(ctx=4096))
    assert plan.devices[0].slot.budget_bytes == 20 * GiB


def test_weights_alone_too_big():
    cfg = cluster(gpu("RTX 3060", 12, "sm_86", 0))
    with pytest.raises(PlanError, match="weights alone"):
        make_plan(cfg, facts(n_layer=80, layer_mib=400), PlanOptions())


def test_slow_link_makes_split_costlier():
    fast = cluster(gpu("RTX 3060", 12, "sm_86", 0), master_devices=[gpu("RTX 3060", 12, "sm_86", 0)])
    m = facts(n_layer=40, layer_mib=400)  # needs both cards
    p = make_plan(fast, m, PlanOptions(ctx=2048))
    assert len(p.devices) == 2 and p.predicted_tg_tokens_per_s > 0


def test_all_mode_balances_by_speed():
    cfg = cluster(gpu("RTX 3060", 12, "sm_86", 0), gpu("RTX 4090", 24, "sm_89", 1))
    plan = make_plan(cfg, facts(n_layer=20, layer_mib=100), PlanOptions(ctx=4096, split="all"))
    n_slow, n_fast = plan.tensor_split
    assert n_fast > n_slow > 0


def test_link_speed_enters_the_prediction():
    def planned(link_gbps):
        cfg = ClusterConfig.model_validate({"master": {"host": "m"}, "hosts": [
            {"name": "m", "address": "10.0.0.1", "devices": [gpu("RTX 3060", 12, "sm_86", 0)]},
            {"name": "w", "address": "10.0.0.2", "link_gbps": link_gbps, "devices": [gpu("RTX 3060", 12, "sm_86", 0)]}]})
        return make_plan(cfg, facts(n_layer=40, layer_mib=400, n_embd=8192), PlanOptions(ctx=2048))

    fast, slow = planned(10), planned(0.1)
    assert len(fast.devices) == len(slow.devices) == 2
    assert slow.predicted_tg_tokens_per_s < fast.predicted_tg_tokens_per_s
