from __future__ import annotations

from ..plan import Plan, PlanOptions, make_plan
from .context import Project


def run(project: Project, model: str | None, **overrides: object) -> tuple[str, Plan]:
    name, entry = project.model_entry(model)
    facts = project.model_facts(entry)
    opts = PlanOptions.from_entry(entry, **overrides)
    return name, make_plan(project.config, facts, opts)


def to_json(name: str, plan: Plan) -> dict:
    o = plan.options
    return {
        "version": 1,
        "model": {"name": name, **plan.model.to_json()},
        "ctx": plan.ctx, "parallel": o.parallel, "ctx_per_slot": plan.ctx_per_slot,
        "cache_type_k": o.cache_type_k, "cache_type_v": o.cache_type_v, "flash_attn": o.flash_attn,
        "split": o.split,
        "devices": [{
            "id": d.slot.id, "host": d.slot.host, "kind": d.slot.kind, "vendor": d.slot.vendor,
            **({"endpoint": d.slot.endpoint} if d.slot.kind == "rpc" else {}),
            "layers": list(d.layers) if d.layers else None, "output_layer": d.has_output,
            "budget_bytes": d.slot.budget_bytes, "weights_bytes": d.weights_bytes, "kv_bytes": d.kv_bytes,
            "compute_bytes": d.compute_bytes, "total_bytes": d.total_bytes,
        } for d in plan.devices],
        "left_out": [{"id": s.id, "host": s.host} for s in plan.left_out],
        "tensor_split": plan.tensor_split,
        "predicted_tg_tokens_per_s": round(plan.predicted_tg_tokens_per_s, 1),
        "llama_server_args": plan.llama_server_args(),
        "warnings": list(plan.warnings),
    }
