"""Plans on part of the cluster (fallback plans without a lost host, router models on workers of
their own, replicas' worker groups), with every device named and dialled as the whole cluster names it."""

from __future__ import annotations

from dataclasses import replace

from ..inventory.config import ClusterConfig
from ..inventory.topology import Worker, rpc_workers
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts
from .plan import Plan, PlanOptions, make_plan
from .speed import device_speed


def workers_fastest_first(cfg: ClusterConfig) -> list[Worker]:
    """The cluster's ggml-rpc-servers by the decode rate of their devices, fastest first (stable)."""
    return sorted(rpc_workers(cfg), key=lambda w: -sum(device_speed(d).dense_gbs for d in w.devices))


def named_as_in(cfg: ClusterConfig, plan: Plan) -> Plan:
    """plan, made on a subset of cfg, with its RPC devices' endpoints (and ids) those of cfg: a worker is
    the same (host, port) in both, but its TLS tunnel address depends on which hosts have workers."""
    worker_at = {(w.host, w.port): w for w in rpc_workers(cfg)}
    renamed: dict[str, str] = {}

    def rename(slot):  # noqa: ANN001, ANN202 - a placement Slot
        if slot.kind != "rpc" or slot.endpoint is None:
            return slot
        worker = worker_at[(slot.host, int(slot.endpoint.rsplit(":", 1)[1]))]
        new_id = slot.id.replace(f"[{slot.endpoint}]", f"[{worker.endpoint}]")
        renamed[slot.id] = new_id
        # the device as cfg holds it (the subset's are copies): status matches devices by identity
        device = worker.devices[int(slot.id[len("RPC"):slot.id.index("[")])]
        return replace(slot, id=new_id, endpoint=worker.endpoint, device=device)

    devices = tuple(replace(d, slot=rename(d.slot)) for d in plan.devices)
    left_out = tuple(rename(s) for s in plan.left_out)
    spec = plan.speculation
    if spec is not None and spec.where in renamed:
        spec = replace(spec, where=renamed[spec.where])
    return replace(plan, devices=devices, left_out=left_out, speculation=spec)


def plan_on(cfg: ClusterConfig, sub: ClusterConfig, model: ModelFacts, opts: PlanOptions,
            projector: ProjectorFacts | None = None, draft: ModelFacts | None = None) -> Plan:
    """The plan on sub (topology.with_devices of cfg), named as in cfg. Raises PlanError when nothing fits."""
    return named_as_in(cfg, make_plan(sub, model, opts, projector, draft))
