"""`plan --compare`: the candidate plans side by side — the chosen one, a split over every device,
each host alone where the model fits there, the MoE experts in the master's RAM, each way of
speculating — predicted tok/s and memory, best first, and why the chosen one wins.
`--split-mode tensor` is not a candidate: over RPC it decoded 72 % slower than the layer split
even on loopback (26.5 vs 95.0 tok/s, DESIGN.md §8)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import PlanError
from ..inventory.config import ClusterConfig
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts
from .choose import choose, speculating_plans
from .plan import Plan, PlanOptions, plan_once


@dataclass(frozen=True)
class Candidate:
    label: str
    plan: Plan | None
    why_not: str = ""  # when it does not fit
    chosen: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.plan.predicted_tg_tokens_per_s if self.plan else 0.0

    @property
    def memory_bytes(self) -> int:
        return sum(d.total_bytes for d in self.plan.devices) if self.plan else 0


def _try(label: str, make) -> Candidate:  # noqa: ANN001
    try:
        return Candidate(label, make())
    except PlanError as exc:
        return Candidate(label, None, exc.cause)


def _single_host(cfg: ClusterConfig, host: str) -> ClusterConfig:
    """The cluster with only this host's devices (the master still runs llama-server)."""
    hosts = [h if h.name == host else h.model_copy(update={"devices": []}) for h in cfg.hosts]
    return cfg.model_copy(update={"hosts": hosts})


def compare(cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions, projector: ProjectorFacts | None,
            draft: ModelFacts | None) -> list[Candidate]:
    chosen = choose(cfg, model, opts, projector, draft)
    plain = replace(opts, speculative="off")
    def split(how: str, label: str) -> Candidate:
        return _try(label, lambda: plan_once(cfg, model, replace(plain, split=how), projector))

    out = [Candidate("chosen", chosen, chosen=True), split("speed", "split: speed, no speculation"),
           split("all", "split: all (every device)")]
    for host in cfg.hosts:
        if host.devices and len(cfg.hosts) > 1:
            out.append(_try(f"{host.name} alone", lambda h=host.name: plan_once(_single_host(cfg, h), model, plain,
                                                                                  projector)))
    if model.n_expert:
        out.append(_try("MoE experts in the master's RAM", lambda: plan_once(cfg, model, replace(plain, experts="cpu"),
                                                                           projector)))
    try:
        base = plan_once(cfg, model, plain, projector)
        for p in speculating_plans(cfg, model, replace(opts, speculative="auto" if opts.speculative in ("auto", "off")
                                                        else opts.speculative), projector, draft, base):
            sp = p.speculation
            out.append(Candidate(f"speculative {sp.mode}" + (f" on {sp.where}" if sp.where else ""), p))
    except PlanError:
        pass
    return sorted(out, key=lambda c: (-c.tokens_per_s, not c.chosen))


def why_chosen(candidates: list[Candidate]) -> str:
    chosen = next(c for c in candidates if c.chosen)
    others = [c for c in candidates if c.plan is not None and not c.chosen]
    if not others:
        return "it is the only plan that fits"
    faster = [c for c in others if c.tokens_per_s > chosen.tokens_per_s * 1.001]
    if not faster:
        return f"it is predicted fastest ({chosen.tokens_per_s:.1f} tok/s)"
    best = faster[0]
    return (f"{best.label} is predicted {best.tokens_per_s / chosen.tokens_per_s:.2f}x faster, but the chosen plan "
            "follows cluster.yaml (split, experts, speculative: auto keeps speculation off unless it wins by 5 %)")
