"""Plans on part of the cluster (fallback plans without a lost host, router models on their own
devices), with every device named and dialled as the whole cluster names it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..inventory.config import ClusterConfig, Device
from ..inventory.topology import local_gpus, rpc_workers, with_devices
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts
from .plan import Plan, PlanOptions, make_plan


def subset_config(cfg: ClusterConfig, keep: Callable[[Device], bool]) -> ClusterConfig | None:
    """cfg with only the kept devices; None when that would turn one of the master host's RPC
    devices into a local one (its image serves only the master's vendor)."""
    sub = with_devices(cfg, keep)
    local = {id(d) for d in local_gpus(cfg)}
    if any(id(d) not in local for d in local_gpus(sub)):
        return None
    return sub


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
    """The plan on sub (a subset_config of cfg), named as in cfg. Raises PlanError when nothing fits."""
    return named_as_in(cfg, make_plan(sub, model, opts, projector, draft))
