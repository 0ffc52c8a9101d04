from __future__ import annotations

from ..planner.compare import Candidate, why_chosen
from ..planner.compare import compare as compare_plans
from ..planner.fallback import Fallback, fallback_plans
from ..planner.plan import Plan, PlanOptions, make_plan
from ..planner.replicas import ReplicaPlan, replicas_of
from ..planner.router import RouterPlan, plan_router
from .context import Project


def run(project: Project, model: str | None, **overrides: object) -> tuple[str, Plan, list[Fallback]]:
    """The plan, and the fallback plan for each worker host the master can lose."""
    name, entry = project.model_entry(model)
    facts = project.model_facts(entry)
    opts = PlanOptions.from_entry(entry, **overrides)
    extras = (project.projector_facts(entry), project.draft_facts(entry))
    plan = make_plan(project.config, facts, opts, *extras)
    return name, plan, fallback_plans(project.config, plan, opts, *extras)


def run_replicas(project: Project, model: str | None, **overrides: object) -> ReplicaPlan | None:
    """replicas: in cluster.yaml: every count of groups considered, and the one chosen by goal."""
    name, entry = project.model_entry(model)
    if entry.replicas == 1:
        return None
    return replicas_of(project.config, entry, project.model_facts(entry), PlanOptions.from_entry(entry, **overrides),
                       project.projector_facts(entry), project.draft_facts(entry))


def replicas_json(rp: ReplicaPlan) -> dict:
    return {"goal": rp.goal, "concurrency": rp.concurrency, "chosen": rp.chosen.replicas, "choices": [
        {"replicas": c.replicas, "fits": bool(c.plans), "why_not": c.why_not,
         "single_tg_tokens_per_s": round(c.single_tps, 1), "aggregate_tg_tokens_per_s": round(c.aggregate_tps, 1),
         "rpc": [p.rpc_endpoints for p in c.plans], "tensor_split": [p.tensor_split for p in c.plans]}
        for c in rp.choices]}


def run_router(project: Project, **overrides: object) -> RouterPlan:
    """serve: several models: each model's plan, and whether they stay loaded together."""
    return plan_router(project.config, project.model_requests(project.config.served_models, **overrides))


def router_json(router: RouterPlan) -> dict:
    return {"version": 2, "router": {"resident": router.resident, "models_max": router.models_max,
                                     "why_switching": router.why_switching, "rpc": router.rpc_endpoints},
            "models": [to_json(m.name, m.plan) for m in router.models]}


def compare(project: Project, model: str | None, **overrides: object) -> list[Candidate]:
    name, entry = project.model_entry(model)
    opts = PlanOptions.from_entry(entry, **overrides)
    return compare_plans(project.config, project.model_facts(entry), opts, project.projector_facts(entry),
                         project.draft_facts(entry))


def compare_json(candidates: list[Candidate]) -> dict:
    return {"version": 1, "why": why_chosen(candidates), "candidates": [
        {"label": c.label, "chosen": c.chosen, "fits": c.plan is not None, "why_not": c.why_not or None,
         "predicted_tg_tokens_per_s": round(c.tokens_per_s, 1), "memory_bytes": c.memory_bytes,
         "ctx": c.plan.ctx if c.plan else None, "tensor_split": c.plan.tensor_split if c.plan else None}
        for c in candidates]}


def fallback_json(fb: Fallback) -> dict:
    p = fb.plan
    return {"without": fb.without, "worker": fb.worker, "fits": p is not None, "why_not": fb.reason,
            "ctx": p.ctx if p else None, "ctx_reduced": fb.ctx_reduced, "tensor_split": p.tensor_split if p else None,
            "rpc": p.rpc_endpoints if p else None,
            "predicted_tg_tokens_per_s": round(p.predicted_tg_tokens_per_s, 1) if p else None}


def to_json(name: str, plan: Plan, fallbacks: list[Fallback] = ()) -> dict:
    o = plan.options
    host = plan.host
    return {
        "version": 2,
        "model": {"name": name, **plan.model.to_json()},
        "ctx": plan.ctx, "parallel": o.parallel, "ctx_per_slot": plan.ctx_per_slot,
        "cache_type_k": o.cache_type_k, "cache_type_v": o.cache_type_v, "flash_attn": o.flash_attn,
        "split": o.split, "experts": o.experts,
        "devices": [{
            "id": d.slot.id, "host": d.slot.host, "kind": d.slot.kind, "vendor": d.slot.vendor,
            **({"endpoint": d.slot.endpoint} if d.slot.kind == "rpc" else {}),
            "layers": list(d.layers) if d.layers else None, "output_layer": d.has_output,
            "budget_bytes": d.slot.budget_bytes, "reserve_bytes": d.slot.reserve_bytes,
            "weights_bytes": d.weights_bytes, "kv_bytes": d.kv_bytes, "state_bytes": d.state_bytes,
            "compute_bytes": d.compute_bytes, "projector_bytes": d.projector_bytes, "draft_bytes": d.draft_bytes,
            "total_bytes": d.total_bytes,
            "speed": {"decode_gbs": round(d.slot.speed.dense_gbs, 2), "expert_gbs": round(d.slot.speed.expert_gbs, 2),
                      "fixed_ms": round(d.slot.speed.fixed_s * 1000, 3), "hop_ms": round(d.slot.hop_s * 1000, 3),
                      "device": "measured" if d.slot.speed.measured else "table",
                      "link": "measured" if d.slot.hop_measured else "default"},
        } for d in plan.devices],
        "left_out": [{"id": s.id, "host": s.host} for s in plan.left_out],
        "experts_on_host": list(plan.experts_on_host),
        "master_ram": None if host is None else {
            "token_embd_bytes": host.token_embd_bytes, "expert_bytes": host.expert_bytes,
            "compute_bytes": host.compute_bytes, "cache_ram_bytes": host.cache_ram_bytes,
            "draft_bytes": host.draft_bytes, "total_bytes": host.total_bytes, "budget_bytes": host.budget_bytes},
        "projector": None if plan.projector is None else {
            "file": plan.projector.name, "weight_bytes": plan.projector.weight_bytes,
            "compute_bytes": plan.projector.compute_bytes},
        "tensor_split": plan.tensor_split,
        "predicted_tg_tokens_per_s": round(plan.predicted_tg_tokens_per_s, 1),
        "predicted_without_speculation": round(plan.predicted_without_speculation, 1),
        "speculation": None if plan.speculation is None else {
            "mode": plan.speculation.mode, "draft_max": plan.speculation.draft_max,
            "acceptance": plan.speculation.acceptance, "where": plan.speculation.where,
            "draft_token_ms": round(plan.speculation.draft_token_s * 1000, 3)},
        "llama_server_args": plan.llama_server_args(),
        "fallbacks": [fallback_json(fb) for fb in fallbacks],
        "warnings": list(plan.warnings),
    }
