from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..inventory.config import parse_config
from ..errors import ConfigError, UsageError
from ..inventory.discovery import HostReport, InspectTarget, plain_text, inspect

# Fields inspect owns on a device; everything else (rpc_port, reserve_gb, threads, ...) is the user's.
DETECTED = ("name", "arch", "vram_gb", "bus_id", "power_limit_w", "power_min_w", "power_max_w")


@dataclass(frozen=True)
class InspectResult:
    reports: tuple[HostReport, ...]
    errors: tuple[str, ...]
    diff: str | None  # --write: what changed in cluster.yaml


def targets_for(args: list[str], config_path: Path) -> list[InspectTarget]:
    if not args:
        return [InspectTarget("local", None)]
    hosts = {}
    if config_path.exists():
        raw = yaml.safe_load(config_path.read_text()) or {}
        hosts = {h.get("name"): h for h in raw.get("hosts") or [] if isinstance(h, dict)}
    out = []
    for a in args:
        if a == "local":
            out.append(InspectTarget("local", None))
        elif a.startswith("ssh://"):
            out.append(InspectTarget(a, a))
        elif a in hosts:
            ssh = hosts[a].get("ssh")
            if not ssh:
                raise UsageError(f"host {a} has no ssh: entry in cluster.yaml", "add ssh: user@address to it, or pass ssh://user@host")
            out.append(InspectTarget(a, ssh, host_name=a))
        else:
            raise UsageError(f"target {a!r} is neither ssh://user@host[:port] nor a host of cluster.yaml",
                             "pass ssh://user@host, a host name from cluster.yaml, or nothing for this machine")
    return out


def _device(gpu) -> dict:  # noqa: ANN001
    arch = gpu.arch if gpu.arch and re.fullmatch(r"sm_\d{2,3}a?|gfx[0-9a-f]{3,4}", gpu.arch) else None
    d = {"vendor": gpu.vendor, "name": plain_text(gpu.name) or None, "arch": arch,
         "vram_gb": round(gpu.vram_mib / 1024, 1) if gpu.vram_mib else None, "index": gpu.index,
         "bus_id": gpu.bus_id, "power_limit_w": gpu.power_limit_w, "power_min_w": gpu.power_min_w,
         "power_max_w": gpu.power_max_w}
    return {k: v for k, v in d.items() if v is not None and (v != 0 or k == "index")}  # GPU 0 keeps its index


def merge(raw: dict, reports: list[HostReport]) -> dict:
    raw = dict(raw)
    hosts = [dict(h) for h in raw.get("hosts") or []]
    for rep in reports:
        host = next((h for h in hosts if rep.target.host_name and h.get("name") == rep.target.host_name), None) \
            or next((h for h in hosts if rep.address and h.get("address") == rep.address), None) \
            or next((h for h in hosts if h.get("name") == rep.name), None)
        if host is None:
            host = {"name": rep.name, "address": rep.address or "127.0.0.1"}
            if rep.target.ssh:
                host["ssh"] = rep.target.ssh
            hosts.append(host)
        if any(g.vendor == "amd" for g in rep.devices):
            for key in ("video_gid", "render_gid"):
                if getattr(rep, key) is not None:
                    host[key] = getattr(rep, key)
            if rep.amd_cdi:
                host["amd_cdi"] = True
        if rep.ram_mib:
            host["ram_gb"] = round(rep.ram_mib / 1024, 1)
        devices = [dict(d) for d in host.get("devices") or []]
        for gpu in rep.devices:
            found = _device(gpu)
            mine = next((d for d in devices if d.get("vendor") == gpu.vendor and d.get("index", 0) == gpu.index), None)
            if mine is None:
                devices.append(found)
            else:
                mine.update({k: v for k, v in found.items() if k in DETECTED})
        if not devices and not rep.devices and rep.ram_mib:
            # no GPU: the host still serves a CPU worker with most of its RAM
            devices.append({"vendor": "cpu", "memory_gb": max(1, int(rep.ram_mib * 0.75 / 1024)),
                            "threads": rep.cpu_cores or 4})
        host["devices"] = devices
    raw["hosts"] = hosts
    names = [h.get("name") for h in hosts]
    master = raw.get("master") or {}
    if master.get("host") not in names and names:
        master = {**master, "host": names[0]}
    raw["master"] = master
    return raw


def run(args: list[str], config_path: Path, write: bool, timeout_s: float) -> InspectResult:
    targets = targets_for(args, config_path)
    reports, errors = inspect(targets, timeout_s)
    diff = None
    if write and reports:
        before = config_path.read_text() if config_path.exists() else ""
        raw = yaml.safe_load(before) or {} if before else {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_path}: expected a mapping", "fix cluster.yaml or move it away")
        after = yaml.safe_dump(merge(raw, reports), sort_keys=False, default_flow_style=None, width=120)
        parse_config(after, str(config_path))  # never write an inventory that plan would reject
        diff = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                            str(config_path), str(config_path)))
        if diff:
            tmp = config_path.with_suffix(".yaml.tmp")
            tmp.write_text(after)
            os.replace(tmp, config_path)
    return InspectResult(tuple(reports), tuple(errors), diff)
