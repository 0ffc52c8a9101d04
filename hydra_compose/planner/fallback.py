"""Fallback plans: for every worker host that could be lost — and, on a host with several workers,
every one of them — the best plan on what is left (the same model; the largest context that fits
when the chosen one no longer does), or why none fits. The master's supervisor switches to one when
those workers stay unreachable. Pure arithmetic, like the plan itself."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import PlanError
from ..inventory.config import ClusterConfig
from ..inventory.topology import Worker, rpc_workers, with_devices
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts
from .plan import Plan, PlanOptions
from .subset import plan_on


@dataclass(frozen=True)
class Fallback:
    without: str  # the lost host
    plan: Plan | None  # None: the model does not fit on what is left
    reason: str | None = None  # why none fits
    ctx_reduced: bool = False  # the plan's context did not fit; this is the largest that does
    worker: str | None = None  # only this worker (service) of the host is lost

    @property
    def label(self) -> str:
        return f"{self.without} {self.worker}" if self.worker else self.without

    @property
    def file_stem(self) -> str:
        return f"{self.without}-{self.worker}" if self.worker else self.without

    def describe(self) -> str:
        if self.plan is None:
            return f"without {self.label}: no plan fits ({self.reason})"
        return (f"without {self.label} (ctx {self.plan.ctx}, predicted "
                f"{self.plan.predicted_tg_tokens_per_s:.1f} tok/s)")


def lost_hosts(cfg: ClusterConfig, plan: Plan) -> list[str]:
    """Hosts whose loss the master survives: every host whose RPC workers the plan uses, except the
    master's own (its workers restart with it)."""
    used = {d.slot.host for d in plan.devices if d.slot.kind == "rpc"}
    out: list[str] = []
    for w in rpc_workers(cfg):
        if w.host != cfg.master.host and w.host in used and w.host not in out:
            out.append(w.host)
    return out


def _without_host(cfg: ClusterConfig, name: str) -> ClusterConfig:
    gone = {id(d) for d in cfg.host(name).devices}
    return with_devices(cfg, lambda d: id(d) not in gone)


def _without_worker(cfg: ClusterConfig, lost: Worker) -> ClusterConfig:
    gone = {id(d) for d in lost.devices}
    return with_devices(cfg, lambda d: id(d) not in gone)


def _fallback(cfg: ClusterConfig, rest: ClusterConfig, host: str, worker: str | None, model: ModelFacts, opts: PlanOptions,
              projector: ProjectorFacts | None, draft: ModelFacts | None) -> Fallback:
    try:
        return Fallback(host, plan_on(cfg, rest, model, opts, projector, draft), worker=worker)
    except PlanError as exc:
        reason = exc.cause
    if opts.ctx is not None:  # a smaller context may still fit
        try:
            return Fallback(host, plan_on(cfg, rest, model, replace(opts, ctx=None), projector, draft),
                            ctx_reduced=True, worker=worker)
        except PlanError as exc:
            reason = exc.cause
    return Fallback(host, None, reason, worker=worker)


def fallback_plans(cfg: ClusterConfig, plan: Plan, opts: PlanOptions, projector: ProjectorFacts | None = None,
                   draft: ModelFacts | None = None) -> list[Fallback]:
    """opts: the options the plan was made with (the plan's own carry what the planner chose)."""
    used = {d.slot.endpoint for d in plan.devices if d.slot.kind == "rpc"}
    out = []
    for name in lost_hosts(cfg, plan):
        out.append(_fallback(cfg, _without_host(cfg, name), name, None, plan.model, opts, projector, draft))
        mine = [w for w in rpc_workers(cfg) if w.host == name]
        if len(mine) > 1:  # one GPU (or its worker) gone, the rest of the host still serving
            for w in mine:
                if w.endpoint in used:
                    out.append(_fallback(cfg, _without_worker(cfg, w), name, w.service, plan.model, opts, projector,
                                         draft))
    return out
