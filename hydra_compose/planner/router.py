"""Several models behind one llama-server router (serve: in cluster.yaml): each model gets its own
plan, and the router may hold them loaded together only where that is safe.

An RPC worker serves one client at a time: a second llama-server child dialling a worker that
another child holds waits forever (llama.cpp #28908, reproduced here). So either every model gets
devices of its own (disjoint workers, each model's memory counted on its own devices: all stay
loaded, --models-max N), or each model is planned on the whole cluster and the router switches
between them (--models-max 1: loading one unloads the other first; the workers' -c tensor cache
makes a second load faster). Pure arithmetic, like the plan itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PlanError
from ..inventory.config import ClusterConfig
from ..inventory.topology import local_gpus, with_devices
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts
from .plan import Plan, PlanOptions, make_plan
from .subset import plan_on, workers_fastest_first

# When cluster.yaml leaves a model's context open, a model gets devices of its own only where it
# keeps at least this many tokens per slot (or its training context): a model squeezed onto one
# device at 512 tokens serves nobody well; switching on the whole cluster does.
RESIDENT_MIN_CTX = 4096


@dataclass(frozen=True)
class ModelRequest:
    """One model to serve, as cluster.yaml and its headers describe it."""

    name: str
    facts: ModelFacts
    options: PlanOptions
    projector: ProjectorFacts | None = None
    draft: ModelFacts | None = None


@dataclass(frozen=True)
class RoutedModel:
    name: str
    plan: Plan


@dataclass(frozen=True)
class RouterPlan:
    models: tuple[RoutedModel, ...]
    resident: bool  # True: every model on devices of its own, all loaded together
    why_switching: str | None = None  # resident False: why the models do not get devices of their own

    @property
    def models_max(self) -> int:
        return len(self.models) if self.resident else 1

    @property
    def rpc_endpoints(self) -> list[str]:
        """Every worker some model dials, each once, in first-use order (the supervisor waits for them)."""
        out: list[str] = []
        for m in self.models:
            out += [e for e in m.plan.rpc_endpoints if e not in out]
        return out

    def host_bytes(self) -> int:
        """The master's RAM while the models the router may hold together are loaded."""
        totals = sorted((m.plan.host.total_bytes for m in self.models if m.plan.host), reverse=True)
        return sum(totals[:self.models_max])


def _enough_context(req: ModelRequest, plan: Plan) -> bool:
    if req.options.ctx is not None:
        return True
    return plan.ctx_per_slot >= min(RESIDENT_MIN_CTX, req.facts.n_ctx_train)


def _own_devices(cfg: ClusterConfig, requests: list[ModelRequest]) -> tuple[dict[str, Plan] | None, str]:
    """Each model on the fewest of the remaining fastest workers that hold it, largest model first;
    None (and why) when some model is left without."""
    if local_gpus(cfg):
        return None, "the master's own GPUs serve one model at a time"
    free = workers_fastest_first(cfg)  # what a model may own: a ggml-rpc-server, all its devices
    plans: dict[str, Plan] = {}
    for req in sorted(requests, key=lambda r: -(sum(r.facts.layer_bytes) + r.facts.output_bytes)):
        found = None
        for k in range(1, len(free) + 1):
            owned = {id(d) for w in free[:k] for d in w.devices}
            sub = with_devices(cfg, lambda d, owned=owned: id(d) in owned)
            try:
                plan = plan_on(cfg, sub, req.facts, req.options, req.projector, req.draft)
            except PlanError:
                continue
            if _enough_context(req, plan):
                found = plan
                break
        if found is None:
            return None, f"{req.name} does not fit on the workers the larger models leave"
        plans[req.name] = found
        free = [w for w in free if w.endpoint not in found.rpc_endpoints]
    return plans, ""


def plan_router(cfg: ClusterConfig, requests: list[ModelRequest]) -> RouterPlan:
    """Devices of their own for every model where they fit (all stay loaded); else each model on the
    whole cluster, switched by the router."""
    plans, why = _own_devices(cfg, requests)
    resident = plans is not None
    if plans is not None:
        apart = RouterPlan(tuple(RoutedModel(r.name, plans[r.name]) for r in requests), True)
        budget = next((m.plan.host.budget_bytes for m in apart.models if m.plan.host), None)
        if budget is not None and apart.host_bytes() > budget:
            resident, why = False, "the models' host memory together exceeds the master's RAM"
        else:
            return apart
    whole = {}
    for r in requests:
        try:
            whole[r.name] = make_plan(cfg, r.facts, r.options, r.projector, r.draft)
        except PlanError as exc:
            raise PlanError(f"model {r.name}: {exc.cause}", exc.fix) from None
    return RouterPlan(tuple(RoutedModel(r.name, whole[r.name]) for r in requests), resident, why)
