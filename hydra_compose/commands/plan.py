from __future__ import annotations

from ..planner.plan import Plan, PlanOptions, make_plan
from .context import Project


def run(project: Project, model: str | None, **overrides: object) -> tuple[str, Plan]:
    name, entry = project.model_entry(model)
    facts = project.model_facts(entry)
    opts = PlanOptions.from_entry(entry, **overrides)
    return name, make_plan(project.config, facts, opts, project.projector_facts(entry))


def to_json(name: str, plan: Plan) -> dict:
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
            "compute_bytes": d.compute_bytes, "projector_bytes": d.projector_bytes, "total_bytes": d.total_bytes,
        } for d in plan.devices],
        "left_out": [{"id": s.id, "host": s.host} for s in plan.left_out],
        "experts_on_host": list(plan.experts_on_host),
        "master_ram": None if host is None else {
            "token_embd_bytes": host.token_embd_bytes, "expert_bytes": host.expert_bytes,
            "compute_bytes": host.compute_bytes, "cache_ram_bytes": host.cache_ram_bytes,
            "total_bytes": host.total_bytes, "budget_bytes": host.budget_bytes},
        "projector": None if plan.projector is None else {
            "file": plan.projector.name, "weight_bytes": plan.projector.weight_bytes,
            "compute_bytes": plan.projector.compute_bytes},
        "tensor_split": plan.tensor_split,
        "predicted_tg_tokens_per_s": round(plan.predicted_tg_tokens_per_s, 1),
        "llama_server_args": plan.llama_server_args(),
        "warnings": list(plan.warnings),
    }
