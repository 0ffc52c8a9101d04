"""Inspecting hosts: run the probe script here or over SSH, parse what it printed.

The probe (data/probe.sh) only prints raw tool output; all parsing happens here,
so remote hosts need nothing installed beyond their GPU driver tools.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..vendors.amd import (GpuInfo, ParseError, parse_amd_smi, parse_nvidia_smi, parse_rocm_smi, parse_rocminfo,
                        parse_sysfs)
from ..runtime.power import ssh_argv


@dataclass(frozen=True)
class InspectTarget:
    label: str  # what the user typed: "local", ssh://..., or a cluster host name
    ssh: str | None  # None: this machine
    host_name: str | None = None  # the cluster.yaml host it came from


@dataclass
class HostReport:
    target: InspectTarget
    name: str = ""
    address: str | None = None
    addresses: list[str] = field(default_factory=list)
    cpu_cores: int | None = None
    ram_mib: int | None = None
    disk_free_mib: int | None = None
    docker: dict = field(default_factory=dict)
    kfd: bool = False
    amd_cdi: bool = False  # the AMD container toolkit's CDI spec is installed
    video_gid: int | None = None
    render_gid: int | None = None
    devices: list[GpuInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "target": self.target.label, "address": self.address,
                "addresses": self.addresses, "cpu_cores": self.cpu_cores, "ram_mib": self.ram_mib,
                "disk_free_mib": self.disk_free_mib, "docker": self.docker, "kfd": self.kfd, "amd_cdi": self.amd_cdi,
                "video_gid": self.video_gid, "render_gid": self.render_gid,
                "devices": [d.to_json() for d in self.devices], "notes": self.notes}


def probe_script() -> str:
    return importlib.resources.files("hydra_compose").joinpath("data/probe.sh").read_text()


def run_probe(target: InspectTarget, timeout_s: float) -> str:
    """Raw probe output; raises RuntimeError with a one-line reason."""
    if target.ssh:
        argv = ssh_argv(target.ssh, "bash -s", timeout_s)
    else:
        argv = ["bash", "-s"]
    try:
        r = subprocess.run(argv, input=probe_script(), capture_output=True, text=True, timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{target.label}: no answer within {timeout_s + 30:.0f} s") from None
    except FileNotFoundError:
        raise RuntimeError(f"{target.label}: ssh is not installed here") from None
    if "==end" not in r.stdout:
        lines = r.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {r.returncode}"
        raise RuntimeError(f"{target.label}: {reason}")
    return r.stdout


def sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.fullmatch(r"==(\w+)", line)
        if m:
            name = m[1]
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def _first_int(text: str) -> int | None:
    m = re.search(r"\d+", text or "")
    return int(m[0]) if m else None


def _lan_address(addresses: list[str]) -> str | None:
    """The address workers should bind to: a private IPv4, not loopback or a container bridge."""
    good = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if ip.version == 4 and ip.is_private and not ip.is_loopback and not a.startswith(("172.17.", "172.18.")):
            good.append(a)
    return good[0] if good else (addresses[0] if addresses else None)


def _ipv4(value: str) -> bool:
    """An address another machine can dial (not the wildcard)."""
    from .safe_values import WILDCARD, is_ipv4

    return is_ipv4(value) and value != WILDCARD


def _host_name(raw: str, fallback: str) -> str:
    """A machine's hostname as a cluster.yaml host name (it names a directory): safe characters only."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", raw.strip().split(".")[0])[:63].strip("-.")
    return name or re.sub(r"[^A-Za-z0-9_.-]", "-", fallback.split("@")[-1].split(":")[0])[:63].strip("-.") or "host"


def plain_text(value: str, limit: int = 128) -> str:
    """Free text from another machine's tools: printable, one line, bounded."""
    return re.sub(r"[\x00-\x1f\x7f]", "", value).strip()[:limit]


def parse_report(target: InspectTarget, text: str) -> HostReport:
    s = sections(text)
    rep = HostReport(target)
    rep.name = _host_name(s.get("hostname") or "", target.label)
    # only addresses the master can dial: another machine's output is never trusted as is
    rep.addresses = [a for a in (s.get("addresses") or "").split() if _ipv4(a)]
    rep.address = _lan_address(rep.addresses)
    rep.amd_cdi = "amd.com/gpu" in (s.get("cdi") or "")
    rep.cpu_cores = _first_int(s.get("cores", ""))
    kib = _first_int(s.get("meminfo", ""))
    rep.ram_mib = kib // 1024 if kib else None
    disk = (s.get("disk") or "").split()
    rep.disk_free_mib = int(disk[3]) // 1024 if len(disk) > 3 and disk[3].isdigit() else None
    version = (s.get("docker") or "").strip()
    runtimes = (s.get("docker_runtimes") or "").strip()
    rep.docker = {"version": version or None, "nvidia_runtime": "nvidia" in runtimes}
    rep.kfd = "present" in (s.get("kfd") or "")
    for line in (s.get("groups") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            if parts[0] == "video":
                rep.video_gid = int(parts[2])
            elif parts[0] == "render":
                rep.render_gid = int(parts[2])
    rep.devices = _nvidia(s, rep) + _amd(s, rep)
    return rep


def _nvidia(s: dict[str, str], rep: HostReport) -> list[GpuInfo]:
    try:
        if s.get("nvidia_smi_nocc"):
            rep.notes.append("nvidia-smi rejects compute_cap (old driver): arch taken from the card name")
            return parse_nvidia_smi(s["nvidia_smi_nocc"], with_compute_cap=False)
        if s.get("nvidia_smi", "").strip():
            return parse_nvidia_smi(s["nvidia_smi"])
    except ParseError as exc:
        rep.notes.append(f"nvidia-smi output not understood ({exc}); NVIDIA GPUs skipped")
    return []


def _amd(s: dict[str, str], rep: HostReport) -> list[GpuInfo]:
    attempts = (("amd_smi", parse_amd_smi), ("rocm_smi", parse_rocm_smi), ("rocminfo", parse_rocminfo))
    for key, parse in attempts:
        if (s.get(key) or "").strip():
            try:
                gpus = parse(s[key])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                rep.notes.append(f"{key.replace('_', '-')} output not understood ({type(exc).__name__}); trying the next source")
                continue
            if gpus:
                return _fill_from_sysfs(gpus, s)
    return _sysfs(s)


def _sysfs_cards(s: dict[str, str]) -> tuple[list[dict], list[dict]]:
    cards = []
    for line in (s.get("sysfs_cards") or "").splitlines():
        f = line.split()
        if len(f) >= 3:
            cards.append({"vendor": f[0], "device": f[1], "vram_bytes": int(f[2]) if f[2].isdigit() else None,
                          "bus": f[3] if len(f) > 3 else None})
    nodes = [{"gfx_target_version": int(x)} for x in (s.get("sysfs_kfd") or "").split() if x.isdigit()]
    return cards, nodes


def _sysfs(s: dict[str, str]) -> list[GpuInfo]:
    return parse_sysfs(*_sysfs_cards(s))


def _fill_from_sysfs(gpus: list[GpuInfo], s: dict[str, str]) -> list[GpuInfo]:
    """rocminfo knows no VRAM size: take it (and a missing arch) from sysfs, card by card."""
    from dataclasses import replace

    fs = _sysfs(s)
    return [replace(g, vram_mib=g.vram_mib or (fs[i].vram_mib if i < len(fs) else None),
                    arch=g.arch or (fs[i].arch if i < len(fs) else None),
                    bus_id=g.bus_id or (fs[i].bus_id if i < len(fs) else None)) for i, g in enumerate(gpus)]


def _nvml_local() -> list[GpuInfo] | None:
    """NVIDIA GPUs through NVML when nvidia-ml-py and the driver library load; else None."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no package, no driver, no GPU: fall back to nvidia-smi
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            lo, hi = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h)
            bus = pynvml.nvmlDeviceGetPciInfo(h).busId
            gpus.append(GpuInfo("nvidia", name.removeprefix("NVIDIA ").removeprefix("GeForce "), f"sm_{major}{minor}",
                                pynvml.nvmlDeviceGetMemoryInfo(h).total // 1048576, i,
                                bus.decode() if isinstance(bus, bytes) else bus,
                                pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000, lo / 1000, hi / 1000))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def inspect(targets: list[InspectTarget], timeout_s: float) -> tuple[list[HostReport], list[str]]:
    def one(t: InspectTarget) -> HostReport | str:
        try:
            rep = parse_report(t, run_probe(t, timeout_s))
        except RuntimeError as exc:
            return str(exc)
        if not t.ssh:
            nvml = _nvml_local()
            if nvml is not None:
                rep.devices = nvml + [d for d in rep.devices if d.vendor != "nvidia"]
        return rep

    with ThreadPoolExecutor(max(1, len(targets))) as pool:
        results = list(pool.map(one, targets))
    reports = [r for r in results if isinstance(r, HostReport)]
    errors = [r for r in results if isinstance(r, str)]
    return reports, errors


def to_json(reports: list[HostReport], errors: list[str]) -> dict:
    return {"version": 1, "hosts": [r.to_json() for r in reports], "errors": errors}


