"""Native workers: for a host with `runtime: native` (a Mac's Metal GPU, a Windows desktop, a Linux
box without Docker) a script per worker that installs llama.cpp at the cluster's ref and runs
ggml-rpc-server, a service definition (launchd, systemd user unit, scheduled task) and an installer.

Pure text. Values reach the scripts only as quoted words (the `sh` and `ps` filters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import RenderError
from ..inventory.config import ClusterConfig, Host
from ..inventory.safe_values import is_ipv4
from ..inventory.topology import Worker, rpc_workers
from ..vendors.base import NativeBuild
from .templates import render_template


@dataclass(frozen=True)
class NativeWorker:
    service: str
    endpoint: str
    port: int
    label: str  # launchd label, scheduled task and firewall rule name
    unit: str  # systemd unit file name


def worker_args(w: Worker) -> list[str]:
    """ggml-rpc-server's arguments. Outside a container the server sees every device of the host,
    so its devices are always named (-d CUDA1, -d CPU), never left to the default."""
    record = w.device.record
    names = [f"{record.backend}{d.index or 0}" if d.is_gpu else record.backend for d in w.devices]
    return ["-H", w.bind, "-p", str(w.port), *record.worker_args(list(w.devices)), "-d", ",".join(names), "-c"]


def native_build(host: Host) -> NativeBuild:
    """One llama.cpp install per host: the GPU vendor's build (it carries the CPU backend too)."""
    gpu_vendors = sorted({d.vendor for d in host.devices if d.is_gpu})
    if len(gpu_vendors) > 1:
        raise RenderError(f"native host {host.name} has GPUs of {' and '.join(gpu_vendors)}: one llama.cpp build "
                          "cannot serve both", "serve one of them through Docker on another host, or leave it out")
    vendor = gpu_vendors[0] if gpu_vendors else host.devices[0].vendor if host.devices else None
    if vendor is None:
        raise RenderError(f"native host {host.name} has no devices", "add its devices, or remove the host")
    record = host.devices[[d.vendor for d in host.devices].index(vendor)].record
    return record.native_build(host, [d for d in host.devices if d.vendor == vendor])


def render_native(cfg: ClusterConfig, host: Host, header: str, user_templates: Path | None) -> list[tuple[str, str, int]]:
    """(path, text, mode) of every file of a native host, under native/<host>/."""
    build = native_build(host)
    src = cfg.cluster.llama_cpp
    ref = src.git_ref
    archives = [a.replace("{ref}", ref) for a in build.archives]
    folder = f"native/{host.name}"
    workers, files = [], []
    for w in (w for w in rpc_workers(cfg) if w.host == host.name):
        label = f"io.hydra-compose.{cfg.cluster.name}.{w.service}"
        nw = NativeWorker(w.service, w.endpoint, w.port, label, f"hydra-{cfg.cluster.name}-{w.service}.service")
        workers.append(nw)
        ctx = dict(header=header, service=w.service, host=host.name, ref=ref, git=src.git_url, archives=archives,
                   cmake_flags=build.cmake_flags, args=worker_args(w), cluster=cfg.cluster.name,
                   endpoint=w.endpoint, label=label,
                   devices=", ".join(d.name or f"{d.vendor} {d.index or 0}" for d in w.devices))
        if host.os == "windows":
            files.append((f"{folder}/run-{w.service}.ps1", render_template("native/run-worker.ps1.j2", ctx,
                                                                           user_templates), 0o644))
            continue
        files.append((f"{folder}/run-{w.service}.sh", render_template("native/run-worker.sh.j2", ctx, user_templates),
                      0o755))
        if host.os == "macos":
            files.append((f"{folder}/{label}.plist", render_template("native/worker.plist.j2", ctx, user_templates),
                          0o644))
        else:
            files.append((f"{folder}/{nw.unit}", render_template("native/worker.service.j2", ctx, user_templates),
                          0o644))
    master = cfg.master_host.address
    ctx = dict(header=header, host=host.name, cluster=cfg.cluster.name, os=host.os, workers=workers,
               master_address=master if is_ipv4(master) else "LocalSubnet")
    if host.os == "windows":
        files.append((f"{folder}/install.ps1", render_template("native/install.ps1.j2", ctx, user_templates), 0o644))
    else:
        files.append((f"{folder}/install.sh", render_template("native/install.sh.j2", ctx, user_templates), 0o755))
    return files
