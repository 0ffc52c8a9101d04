"""Replicas for throughput: where a model fits on part of the workers, the cluster may be split into
groups, one llama-server each, behind a load balancer. One stream then runs on a group (slower
than on the whole cluster when the model needed all of it), but several streams run side by side.

For each number of groups the planner gives the single-stream and the aggregate decode rate at
the model's expected concurrency, and picks by the model's goal: latency (the fastest single
stream; more replicas only where they cost it nothing) or throughput (the most tokens per second
in all). Pure arithmetic, like the plan itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PlanError
from ..inventory.config import ClusterConfig, ModelEntry
from ..inventory.topology import Worker, local_gpus, rpc_workers, with_devices
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts
from .plan import Plan, PlanOptions, make_plan
from .subset import plan_on, workers_fastest_first

# A decode step for b streams at once costs (1 + BATCH_COST * (b - 1)) single steps: GPUs stream
# the weights once for the whole batch (memory-bound: a table figure, not measured here); CPUs pay for
# every stream's arithmetic (measured on this repository's 2-core VM: SmolLM2 on a one-thread worker,
# 4 streams on 4 slots gave 98 tok/s in all against 99 for one stream).
BATCH_COST = {True: 0.1, False: 1.0}  # is_gpu -> cost of each further stream in the batch
MAX_REPLICAS = 16


@dataclass(frozen=True)
class ReplicaChoice:
    replicas: int
    plans: tuple[Plan, ...]  # one per group; empty when it does not fit
    single_tps: float  # one stream on the slowest group
    aggregate_tps: float  # every group busy with its share of the concurrency
    why_not: str | None = None


@dataclass(frozen=True)
class ReplicaPlan:
    choices: tuple[ReplicaChoice, ...]
    chosen: ReplicaChoice
    goal: str
    concurrency: int

    @property
    def plans(self) -> tuple[Plan, ...]:
        return self.chosen.plans


def aggregate_tps(plan: Plan, streams: int) -> float:
    """Tokens per second of one llama-server decoding `streams` at once (at most its slots)."""
    batch = max(1, min(streams, plan.options.parallel))
    gpu = all(d.slot.device.is_gpu for d in plan.devices if d.n_items)
    step = (1 + BATCH_COST[gpu] * (batch - 1)) / plan.predicted_tg_tokens_per_s
    return batch / step


def _choice(plans: list[Plan], concurrency: int) -> ReplicaChoice:
    k = len(plans)
    shares = [concurrency // k + (1 if i < concurrency % k else 0) for i in range(k)]  # least-connections
    return ReplicaChoice(k, tuple(plans), min(p.predicted_tg_tokens_per_s for p in plans),
                         sum(aggregate_tps(p, s) for p, s in zip(plans, shares) if s))


def _groups(cfg: ClusterConfig, k: int) -> list[list[Worker]]:
    """k groups of workers, as equal in speed as dealing them out fastest first (snake order) makes them."""
    workers = workers_fastest_first(cfg)
    groups: list[list[Worker]] = [[] for _ in range(k)]
    for i, w in enumerate(workers):
        lap, pos = divmod(i, k)
        groups[pos if lap % 2 == 0 else k - 1 - pos].append(w)
    return groups


def _on_groups(cfg: ClusterConfig, k: int, model: ModelFacts, opts: PlanOptions,
               projector: ProjectorFacts | None, draft: ModelFacts | None) -> list[Plan] | str:
    plans = []
    for group in _groups(cfg, k):
        if not group:
            return f"{k} groups: not enough workers"
        owned = {id(d) for w in group for d in w.devices}
        sub = with_devices(cfg, lambda d, owned=owned: id(d) in owned)
        try:
            plans.append(plan_on(cfg, sub, model, opts, projector, draft))
        except PlanError as exc:
            return f"{k} groups: {exc.cause}"
    return plans


def plan_replicas(cfg: ClusterConfig, model: ModelFacts, opts: PlanOptions, replicas: int | str, goal: str,
                  concurrency: int, projector: ProjectorFacts | None = None,
                  draft: ModelFacts | None = None) -> ReplicaPlan:
    """replicas: a number (exactly that many groups) or "auto" (every count that fits, chosen by goal)."""
    one = make_plan(cfg, model, opts, projector, draft)
    choices = [_choice([one], concurrency)]
    workers = len(rpc_workers(cfg))
    counts = [replicas] if isinstance(replicas, int) else range(2, min(MAX_REPLICAS, workers) + 1)
    for k in counts:
        if k == 1:
            continue
        why = None
        if local_gpus(cfg):
            why = "the master's own GPUs serve one llama-server"
        elif k > workers:
            why = f"{k} groups need {k} workers; the cluster has {workers}"
        found = why or _on_groups(cfg, k, model, opts, projector, draft)
        if isinstance(found, str):
            choices.append(ReplicaChoice(k, (), 0.0, 0.0, found))
            continue
        choices.append(_choice(found, concurrency))
    fitting = [c for c in choices if c.plans]
    if isinstance(replicas, int):
        chosen = next(c for c in choices if c.replicas == replicas)
        if not chosen.plans:
            raise PlanError(f"replicas: {replicas} does not fit ({chosen.why_not})",
                            "use fewer replicas, or replicas: auto")
    elif goal == "throughput":
        chosen = max(fitting, key=lambda c: (round(c.aggregate_tps, 6), c.single_tps))
    else:  # latency: the fastest single stream; among equals (within 2 %), the most aggregate
        best = max(c.single_tps for c in fitting)
        chosen = max((c for c in fitting if c.single_tps >= 0.98 * best), key=lambda c: c.aggregate_tps)
    return ReplicaPlan(tuple(choices), chosen, goal, concurrency)


def replica_port(cfg: ClusterConfig, index: int) -> int:
    """Where replica `index` (0-based) answers on the master's loopback, behind the balancer."""
    return cfg.master.port + 1 + index


def replicas_of(cfg: ClusterConfig, entry: ModelEntry, model: ModelFacts, opts: PlanOptions,
                projector: ProjectorFacts | None = None, draft: ModelFacts | None = None) -> ReplicaPlan | None:
    """The model's replicas: setting from cluster.yaml planned (None for replicas: 1); concurrency
    defaults to the model's slots."""
    if entry.replicas == 1:
        return None
    streams = entry.concurrency if entry.concurrency is not None else opts.parallel
    return plan_replicas(cfg, model, opts, entry.replicas, entry.goal, max(1, streams), projector, draft)

