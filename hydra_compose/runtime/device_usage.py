"""status per device: what each device uses now (the vendor's tool, or a CPU worker's resident
memory, read inside the container that holds the device through the same compose transport `up`
uses) against what the plan gave it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..inventory.config import ClusterConfig, Device
from ..inventory.topology import local_gpus, rpc_workers
from ..planner.plan import Plan
from .stacks import Stack

MiB = 1024**2
PROBE_TIMEOUT_S = 20
MAX_PROBE_OUTPUT = 256 * 1024


@dataclass(frozen=True)
class DeviceStatus:
    host: str
    service: str  # the container that holds it
    device: str  # the name cluster.yaml gives it (or vendor + index)
    vendor: str
    planned_mib: float | None  # None: the plan leaves it out, or it cannot be recomputed
    used_mib: float | None  # None: not reported (no tool, container not running)
    util_pct: float | None = None
    power_w: float | None = None
    temp_c: float | None = None
    over_plan: bool = False


def bound_mib(planned_mib: float) -> float:
    """The plan-accuracy bound: max(2 %, 16 MiB)."""
    return max(0.02 * planned_mib, 16.0)


def _label(d: Device) -> str:
    return d.name or f"{d.vendor}{'' if d.index is None else d.index}"


def _planned(plans: Plan | list[Plan] | None) -> dict[int, float]:
    """id(config Device) -> planned MiB on it: one plan, or several on disjoint devices (replicas, a
    router's loaded models)."""
    if plans is None:
        return {}
    return {id(d.slot.device): d.total_bytes / MiB
            for p in (plans if isinstance(plans, list) else [plans]) for d in p.devices}


def _holders(cfg: ClusterConfig) -> list[tuple[str, str, list[Device]]]:
    """(host, service, devices) for every container that holds devices: workers, and llama-server
    with the master's local GPUs."""
    out = [(w.host, w.service, list(w.devices)) for w in rpc_workers(cfg) if cfg.host(w.host).runtime == "docker"]
    if local_gpus(cfg):
        out.append((cfg.master.host, "llama-server", local_gpus(cfg)))
    return out


def _probe(stack: Stack, service: str, devices: list[Device]) -> list:
    record = devices[0].record
    argv = record.usage_probe(devices)
    if argv is None:
        return [None for _ in devices]
    r = stack.compose("exec", "-T", service, *argv, timeout=PROBE_TIMEOUT_S)
    text = r.stdout if isinstance(r.stdout, str) and r.returncode == 0 else ""
    return record.parse_usage(text[:MAX_PROBE_OUTPUT], devices)


def device_rows(cfg: ClusterConfig, plan: Plan | list[Plan] | None, stacks: dict[str, Stack],
                running: dict[str, dict]) -> tuple[list[DeviceStatus], list[str]]:
    planned = _planned(plan)
    jobs = [(host, service, devices) for host, service, devices in _holders(cfg)
            if host in stacks and running.get(host, {}).get(service, {}).get("State") == "running"]
    with ThreadPoolExecutor(max(1, min(8, len(jobs)))) as pool:
        usage = dict(zip([(h, s) for h, s, _ in jobs],
                         pool.map(lambda j: _probe(stacks[j[0]], j[1], j[2]), jobs)))
    rows, warnings = [], []
    for host, service, devices in _holders(cfg):
        found = usage.get((host, service)) or [None for _ in devices]
        for d, u in zip(devices, found):
            want = planned.get(id(d))
            used = None if u is None else u.used_mib
            over = want is not None and used is not None and used > want + bound_mib(want)
            rows.append(DeviceStatus(host, service, _label(d), d.vendor, None if want is None else round(want, 1),
                                     None if used is None else round(used, 1), u and u.util_pct, u and u.power_w,
                                     u and u.temp_c, over))
            if over:
                warnings.append(f"{host}/{service} {_label(d)} uses {used:.0f} MiB, more than the planned "
                                f"{want:.0f} MiB + {bound_mib(want):.0f}: something else holds memory there, or "
                                "the plan is off (report it with `plan --json`)")
    return rows, warnings
