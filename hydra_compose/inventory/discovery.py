"""What inspect learns about a host, from the probe's raw output, and how that merges into
cluster.yaml. Pure functions over text: runtime/probe.py runs the probe (data/probe.sh) here
or over SSH; each vendor record parses its own tools' sections.

Another machine's output is data, never trusted as is: only IPv4 addresses are taken, names
are reduced to safe characters, numbers must be finite decimals.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from .. import vendors
from ..vendors.base import GpuInfo, sysfs_cards
from .safe_values import WILDCARD, is_ipv4


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
    nvidia_driver: str | None = None
    rocm_version: str | None = None
    os: str = "linux"
    devices: list[GpuInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "target": self.target.label, "address": self.address,
                "addresses": self.addresses, "cpu_cores": self.cpu_cores, "ram_mib": self.ram_mib,
                "disk_free_mib": self.disk_free_mib, "docker": self.docker, "kfd": self.kfd, "amd_cdi": self.amd_cdi,
                "video_gid": self.video_gid, "render_gid": self.render_gid,
                "nvidia_driver": self.nvidia_driver, "rocm_version": self.rocm_version, "os": self.os,
                "devices": [d.to_json() for d in self.devices], "notes": self.notes}


MAX_SECTION = 4 << 20  # one tool's output; rocminfo of an 8-GPU box is ~100 KB


def sections(text: str) -> dict[str, str]:
    """The probe's "==name" blocks; a block larger than MAX_SECTION is dropped (a note says so)."""
    out: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    name = None
    for line in text.splitlines():
        m = re.fullmatch(r"==(\w{1,40})", line)
        if m:
            name = m[1]
            out[name], sizes[name] = [], 0
        elif name:
            sizes[name] += len(line) + 1
            if sizes[name] <= MAX_SECTION:
                out[name].append(line)
    return {k: "\n".join(v) + "\n" if sizes[k] <= MAX_SECTION else "" for k, v in out.items()}


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
    rep.os = {"Darwin": "macos", "Linux": "linux"}.get((s.get("os") or "").strip(), "linux")
    apple = (s.get("apple") or "").split()
    if rep.ram_mib is None and apple and apple[-1].isdigit():  # macOS has no /proc/meminfo
        rep.ram_mib = int(apple[-1]) // 1048576
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
    rep.nvidia_driver = _version(s.get("nvidia_driver"))
    rep.rocm_version = _version(s.get("rocm_version"))
    found = []
    for gpu in (gpu for record in vendors.ALL for gpu in record.detect(s, rep.notes)):
        if 0 <= gpu.index <= 255:
            found.append(gpu)
        else:  # another machine's tool said so: never trusted as is
            rep.notes.append(f"a {gpu.vendor} GPU reported index {gpu.index}: skipped")
    # each GPU's /dev/dri node, matched by PCI bus id: index order says nothing next to another card
    nodes = {bus_key(c["bus"]): c["render"] for c in sysfs_cards(s) if c.get("bus") and c.get("render")}
    rep.devices = [replace(g, render_node=g.render_node or nodes.get(bus_key(g.bus_id or ""))) for g in found]
    return rep


def bus_key(bus_id: str) -> str:
    """A PCI address as sysfs spells it: nvidia-smi's 00000000:02:00.0 -> 0000:02:00.0."""
    parts = bus_id.strip().lower().split(":")
    if len(parts) == 3:
        parts[0] = parts[0][-4:].rjust(4, "0")
    elif len(parts) == 2:
        parts.insert(0, "0000")
    return ":".join(parts)


def _version(text: str | None) -> str | None:
    """A driver or toolkit version from a tool's first line: digits and dots, else nothing."""
    m = re.match(r"\s*([0-9]{1,3}(?:\.[0-9]{1,3}){1,2})", text or "")
    return m[1] if m else None



def to_json(reports: list[HostReport], errors: list[str]) -> dict:
    return {"version": 1, "hosts": [r.to_json() for r in reports], "errors": errors}


# Fields inspect owns on a device; everything else (rpc_port, reserve_gb, threads, ...) is the user's.
DETECTED = ("name", "arch", "vram_gb", "bus_id", "render_node", "power_limit_w", "power_min_w", "power_max_w")


def _device(gpu: GpuInfo) -> dict:
    arch = gpu.arch if gpu.arch and vendors.get(gpu.vendor).arch_error(gpu.arch) is None else None
    d = {"vendor": gpu.vendor, "name": plain_text(gpu.name) or None, "arch": arch,
         "vram_gb": round(gpu.vram_mib / 1024, 1) if gpu.vram_mib else None, "index": gpu.index,
         "bus_id": gpu.bus_id, "power_limit_w": gpu.power_limit_w, "power_min_w": gpu.power_min_w,
         "power_max_w": gpu.power_max_w, "render_node": gpu.render_node}
    return {k: v for k, v in d.items() if v is not None and (v != 0 or k == "index")}  # GPU 0 keeps its index


def merge(raw: dict, reports: list[HostReport]) -> dict:
    """cluster.yaml's data with what inspect found: detected fields refreshed, the user's kept."""
    from ..errors import ConfigError

    listed = raw.get("hosts") or []
    if not isinstance(listed, list) or not all(isinstance(h, dict) and isinstance(h.get("devices") or [], list)
                                                for h in listed):
        raise ConfigError("cluster.yaml: hosts must be a list of hosts, each with a list of devices",
                          "fix cluster.yaml first (see examples/), then run inspect --write again")
    if not all(isinstance(dev, dict) for h in listed for dev in h.get("devices") or []):
        raise ConfigError("cluster.yaml: every device must be a mapping", "fix cluster.yaml first")
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
        if any(vendors.get(g.vendor).uses_render_nodes for g in rep.devices):
            for key in ("video_gid", "render_gid"):
                if getattr(rep, key) is not None:
                    host[key] = getattr(rep, key)
            if rep.amd_cdi:
                host["amd_cdi"] = True
        if rep.ram_mib:
            host["ram_gb"] = round(rep.ram_mib / 1024, 1)
        if rep.os == "macos":  # Docker on a Mac cannot reach its GPU: a native worker
            host.update(os="macos", runtime="native")
        for key in ("nvidia_driver", "rocm_version"):  # they pick the toolkit release of the host's image
            if getattr(rep, key):
                host[key] = getattr(rep, key)
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
            devices.append({"vendor": vendors.CPU.name, "memory_gb": max(1, int(rep.ram_mib * 0.75 / 1024)),
                            "threads": rep.cpu_cores or 4})
        host["devices"] = devices
    raw["hosts"] = hosts
    names = [h.get("name") for h in hosts]
    master = raw.get("master") or {}
    if master.get("host") not in names and names:
        master = {**master, "host": names[0]}
    raw["master"] = master
    return raw
