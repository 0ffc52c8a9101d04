"""Choosing among plans: the placement without speculation, and with each way of speculating that
the model and the inventory allow (a draft model on the master's CPU or on a device, the model's
own MTP heads, n-grams when asked), each fitted in full — a draft model's weights and KV are part
of the fit on its device. `speculative: auto` takes a speculating plan only when it is predicted
faster; an explicit mode takes its best plan or says why there is none.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import PlanError
from ..inventory.config import ClusterConfig
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts
from .plan import DraftPlacement, Plan, PlanOptions, device_slots, plan_once
from .speculation import AUTO_MARGIN, DEFAULT_DRAFT_MAX, Speculation, acceptance_for, check_draft
from .speed import CPU_FIXED_S, HOST_RAM_GBS


def choose(cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions, projector: ProjectorFacts | None,
           draft: ModelFacts | None) -> Plan:
    mode = opts.speculative
    base = plan_once(cfg, model, opts, projector)
    if mode == "off":
        return base
    candidates = speculating_plans(cfg, model, opts, projector, draft, base)
    if mode != "auto":
        if not candidates:
            raise PlanError(f"speculative: {mode} cannot be planned for {model.name}: " + _why_not(mode, model, draft),
                            "give draft: FILE (a small model of the same tokenizer), or speculative: auto|off")
        return max(candidates, key=lambda p: p.predicted_tg_tokens_per_s)
    best = max(candidates, key=lambda p: p.predicted_tg_tokens_per_s, default=None)
    if best is not None and best.predicted_tg_tokens_per_s > base.predicted_tg_tokens_per_s * AUTO_MARGIN:
        return best
    return base


def _why_not(mode: str, model: ModelFacts, draft: ModelFacts | None) -> str:
    if mode == "draft":
        return "no draft: model is named" if draft is None else "the draft model fits on no device"
    if mode == "mtp":
        return "it has no multi-token-prediction heads (nextn layers)"
    return "no plan fits"


def speculating_plans(cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions, projector: ProjectorFacts | None,
                      draft: ModelFacts | None, base: Plan) -> list[Plan]:
    mode = opts.speculative
    out: list[Plan] = []
    if draft is not None and mode in ("auto", "draft"):
        check_draft(model, draft)
        k = opts.draft_max or DEFAULT_DRAFT_MAX["draft"]
        accept = acceptance_for("draft", k, opts.acceptance)
        slots = device_slots(cfg, model.n_embd)
        used = {d.slot.id for d in base.devices if d.layers is not None or d.has_output}
        # the master's CPU, its GPUs, and the devices the plan already uses (a draft on an RPC device pays
        # the round trip for every drafted token: the prediction weighs that)
        places: list[int | None] = [None] + [i for i, s in enumerate(slots) if s.kind == "local" or s.id in used]
        for where in places:
            token_s = _draft_token_s(draft, None if where is None else slots[where])
            spec = Speculation("draft", k, accept, "host" if where is None else slots[where].id, token_s,
                               cache_type_k=opts.cache_type_k, cache_type_v=opts.cache_type_v)
            try:
                out.append(plan_once(cfg, model, opts, projector, DraftPlacement(draft, where), spec))
            except PlanError:
                continue
    if model.mtp_bytes and mode in ("auto", "mtp"):
        k = opts.draft_max or DEFAULT_DRAFT_MAX["mtp"]
        with_heads = replace(model, output_bytes=model.output_bytes + model.mtp_bytes)  # loaded beside the output
        last = base.devices[-1].slot
        token_s = last.speed.fixed_s + model.mtp_bytes / (last.speed.dense_gbs * 1e9) + last.hop_s
        spec = Speculation("mtp", k, acceptance_for("mtp", k, opts.acceptance), "", token_s)
        try:
            out.append(plan_once(cfg, with_heads, opts, projector, None, spec))
        except PlanError:
            pass
    if mode == "ngram":
        k = opts.draft_max or DEFAULT_DRAFT_MAX["ngram"]
        out.append(plan_once(cfg, model, opts, projector, None,
                             Speculation("ngram", k, acceptance_for("ngram", k, opts.acceptance), "", 0.0)))
    return out


def _draft_token_s(draft: ModelFacts, slot) -> float:  # noqa: ANN001 - placement.Slot or None (the master's CPU)
    """One drafted token: the draft's weights read once, where it runs (plus the hop to an RPC device)."""
    active = sum(draft.layer_bytes) + draft.output_bytes - round(
        draft.expert_bytes * (1 - draft.n_expert_used / draft.n_expert)) if draft.n_expert else \
        sum(draft.layer_bytes) + draft.output_bytes
    if slot is None:
        return CPU_FIXED_S + active / (HOST_RAM_GBS * 1e9)
    return slot.speed.fixed_s + active / (slot.speed.dense_gbs * 1e9) + slot.hop_s
