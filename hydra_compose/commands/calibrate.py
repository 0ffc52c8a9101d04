"""calibrate: measure every device and every link from the master, through the workers' own RPC
ports (runtime/calibration.py says how), and record the figures in cluster.yaml's `measured:`
blocks, which the planner then uses instead of its tables. The master's llama-server is stopped
for the minute it takes (a worker serving it accepts nobody else) and started again. A host that
cannot be measured is one line; the others are still measured."""

from __future__ import annotations

import datetime
import difflib
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from ..errors import ClusterError, HydraError
from ..inventory.config import MeasuredDevice, MeasuredLink, parse_config, read_config_data, read_config_text
from ..inventory.topology import Worker, local_gpus, rpc_workers
from ..runtime.calibration import ComposeRunner, device_runs, fit_device, model_facts
from ..runtime.calibration_models import write_models
from ..runtime.rpc_link import LinkFigures, measure_link
from ..runtime.stacks import Stack, containers, stacks, server_services
from .context import Project
from .inspect import write_atomically


@dataclass(frozen=True)
class DeviceResult:
    host: str
    service: str
    index: int  # the device's position in the host's devices list
    measured: MeasuredDevice | None
    error: str | None = None


@dataclass(frozen=True)
class LinkResult:
    host: str
    measured: MeasuredLink | None
    error: str | None = None


@dataclass(frozen=True)
class CalibrateResult:
    devices: tuple[DeviceResult, ...]
    links: tuple[LinkResult, ...]
    notes: tuple[str, ...]
    diff: str


def run(project: Project, hosts: list[str] | None, step: Callable[[str], None]) -> CalibrateResult:
    cfg = project.config
    ref, date = cfg.cluster.llama_cpp.git_ref, datetime.date.today().isoformat()
    known = {h.name for h in cfg.hosts}
    for name in hosts or []:
        if name not in known:
            raise ClusterError(f"host {name} is not in cluster.yaml", f"use one of {', '.join(sorted(known))}")
    by_host: dict[str, list[Worker]] = {}
    for w in rpc_workers(cfg):
        if not hosts or w.host in hosts:
            by_host.setdefault(w.host, []).append(w)
    master = {s.host.name: s for s in stacks(project, act=True)}.get(cfg.master.host)
    if master is None:
        raise ClusterError(f"the master host {cfg.master.host} has no compose stack here",
                           "run `hydra-compose generate` first")
    devices: list[DeviceResult] = []
    links: list[LinkResult] = []
    with tempfile.TemporaryDirectory(prefix="hydra-calibrate-") as tmp:
        step("writing the calibration models")
        models = write_models(Path(tmp))
        facts = model_facts(models)
        servers = [s for s in server_services(master) if s != "balancer"]
        rows = containers(master)
        was_running = [s for s in servers if rows.get(s, {}).get("State") == "running"]
        if was_running:  # a worker serving the master accepts nobody else
            step(f"{cfg.master.host}: stopping llama-server while its workers are measured")
            master.checked("stop", *was_running)
        try:
            for host_name, mine in by_host.items():
                step(f"{host_name}: link and devices, from the master through RPC")
                d, link = _host(cfg, master, mine, models, facts, date, ref)
                devices += d
                links.append(link)
        finally:
            if was_running:
                step(f"{cfg.master.host}: starting llama-server again")  # and waiting until it answers
                master.checked("up", "-d", "--no-build", "--wait", "--wait-timeout", "900", *was_running)
    return CalibrateResult(tuple(devices), tuple(links), (), _record(project, devices, links))


def _host(cfg, master: Stack, workers: list[Worker], models, facts, date: str,  # noqa: ANN001
          ref: str) -> tuple[list[DeviceResult], LinkResult]:
    """One host: each worker's link, then every device alone through --rpc (one container run)."""
    host = cfg.host(workers[0].host)
    n_local = len(local_gpus(cfg))
    try:
        figures = [measure_link(w.address, w.port) for w in workers]
        runs, owners = [], []
        for w, fig in zip(workers, figures):
            for j, dev in enumerate(w.devices):
                # the whole model on this device: the server's other devices and the master's own GPUs
                # (after the RPC devices in llama.cpp's order) get split 0
                split = ["0"] * (len(w.devices) + n_local)
                split[j] = "1"
                place = ["-ts", "/".join(split)] if len(split) > 1 else []
                runs += device_runs(w.endpoint, place)
                owners.append((w, j, dev, fig))
        rows = ComposeRunner(master, "llama-server").llama_bench(models, runs)
    except HydraError as exc:
        return [], LinkResult(host.name, None, str(exc))
    results, stacks_ms = [], []
    for k, (w, j, dev, fig) in enumerate(owners):
        try:
            fit = fit_device(rows[4 * k:4 * k + 4], facts, fig.rtt_s)
        except HydraError as exc:
            results.append(DeviceResult(host.name, w.service, host.devices.index(dev), None, str(exc)))
            continue
        if j == 0:
            stacks_ms.append(fit.stack_ms)
        results.append(DeviceResult(host.name, w.service, host.devices.index(dev), MeasuredDevice(
            decode_gbs=round(fit.decode_gbs, 2), expert_gbs=round(fit.expert_gbs, 2), fixed_ms=0.0,
            prompt_tps=round(fit.prompt_tps, 1) or None, date=date, ref=ref)))
    if not stacks_ms:
        return results, LinkResult(host.name, None, "no device of this host could be measured")
    return results, LinkResult(host.name, _link(figures, statistics.mean(stacks_ms), date, ref))


def _link(figures: list[LinkFigures], stack_ms: float, date: str, ref: str) -> MeasuredLink:
    return MeasuredLink(rtt_ms=round(statistics.median(f.rtt_s for f in figures) * 1000, 3),
                        up_gbps=round(min(f.up_bytes_s for f in figures) * 8 / 1e9, 3),
                        down_gbps=round(min(f.down_bytes_s for f in figures) * 8 / 1e9, 3),
                        rpc_ms=round(stack_ms, 3), date=date, ref=ref)


def to_json(r: CalibrateResult) -> dict:
    return {"version": 1,
            "devices": [{"host": d.host, "service": d.service, "index": d.index, "error": d.error,
                         "measured": d.measured.model_dump() if d.measured else None} for d in r.devices],
            "links": [{"host": link.host, "error": link.error,
                       "measured": link.measured.model_dump() if link.measured else None} for link in r.links],
            "notes": list(r.notes), "changed": bool(r.diff)}


def _record(project: Project, devices: list[DeviceResult], links: list[LinkResult]) -> str:
    """Merges the figures into cluster.yaml (checked, then one atomic write); returns the diff."""
    path = project.config_path
    before = read_config_text(path)
    raw = read_config_data(path)
    hosts = {h.get("name"): h for h in raw.get("hosts") or [] if isinstance(h, dict)}
    for d in devices:
        if d.measured is not None:
            hosts[d.host]["devices"][d.index]["measured"] = d.measured.model_dump()
    for link in links:
        if link.measured is not None:
            hosts[link.host]["measured"] = link.measured.model_dump()
    after = yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=120)
    parse_config(after, str(path))
    diff = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), str(path), str(path)))
    if diff:
        write_atomically(path, after)
    return diff
