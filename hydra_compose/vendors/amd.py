"""Turning what GPU tools print into devices. Pure functions over text, so every
format is tested with recorded outputs of real cards.

Order of trust, per vendor: NVIDIA nvidia-smi CSV (NVML is used locally when
nvidia-ml-py loads); AMD amd-smi JSON, then rocm-smi JSON, then rocminfo, then
sysfs (/sys/class/drm and the KFD topology), so a host without ROCm tools is
still inspected.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from ..runtime.power import find_number

# Compute capability by card name, for drivers whose nvidia-smi rejects compute_cap.
NVIDIA_NAME_ARCH = (("rtx 50", "sm_120"), ("rtx pro 6000", "sm_120"), ("rtx 40", "sm_89"), ("l40", "sm_89"),
                    ("l4", "sm_89"), ("rtx 30", "sm_86"), ("a40", "sm_86"), ("a10", "sm_86"), ("rtx a", "sm_86"),
                    ("rtx 20", "sm_75"), ("gtx 16", "sm_75"), ("titan rtx", "sm_75"), ("t4", "sm_75"),
                    ("quadro rtx", "sm_75"), ("a100", "sm_80"), ("a30", "sm_80"), ("h100", "sm_90"),
                    ("h200", "sm_90"), ("gh200", "sm_90"), ("v100", "sm_70"), ("titan v", "sm_70"),
                    ("p100", "sm_60"), ("p40", "sm_61"), ("p4", "sm_61"), ("gtx 10", "sm_61"), ("titan x", "sm_61"),
                    ("gtx 9", "sm_52"), ("m40", "sm_52"))
# PCI device id -> (name, gfx target) for AMD cards seen through sysfs alone.
AMD_DEVICE_IDS = {"0x66a0": ("Instinct MI50/MI60", "gfx906"), "0x66a1": ("Instinct MI50/MI60", "gfx906"),
                  "0x66af": ("Radeon VII", "gfx906"), "0x738c": ("Instinct MI100", "gfx908"),
                  "0x740f": ("Instinct MI210", "gfx90a"), "0x73bf": ("RX 6800/6900", "gfx1030"),
                  "0x744c": ("RX 7900 XTX/XT", "gfx1100"), "0x7480": ("RX 7600/7700", "gfx1102"),
                  "0x747e": ("RX 7800/7700 XT", "gfx1101"), "0x7550": ("RX 9070", "gfx1201")}


@dataclass(frozen=True)
class GpuInfo:
    vendor: str
    name: str
    arch: str | None
    vram_mib: int | None
    index: int
    bus_id: str | None = None
    power_limit_w: float | None = None
    power_min_w: float | None = None
    power_max_w: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


class ParseError(ValueError):
    pass


def _num(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def nvidia_arch_from_name(name: str) -> str | None:
    low = name.lower()
    for key, arch in NVIDIA_NAME_ARCH:
        if key in low:
            return arch
    return None


def parse_nvidia_smi(csv: str, with_compute_cap: bool = True) -> list[GpuInfo]:
    """index, name, memory.total, [compute_cap,] power.limit, power.min_limit, power.max_limit, pci.bus_id."""
    gpus = []
    for line in csv.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        want = 8 if with_compute_cap else 7
        if len(f) != want or not f[0].isdigit():
            raise ParseError(f"unexpected nvidia-smi line {line[:60]!r}")
        if with_compute_cap:
            idx, name, mem, cc, pl, pmin, pmax, bus = f
            arch = f"sm_{cc.replace('.', '')}" if re.fullmatch(r"\d+\.\d", cc) else nvidia_arch_from_name(name)
        else:
            idx, name, mem, pl, pmin, pmax, bus = f
            arch = nvidia_arch_from_name(name)
        vram = _num(mem)
        gpus.append(GpuInfo("nvidia", name.removeprefix("NVIDIA ").removeprefix("GeForce "), arch,
                            int(vram) if vram else None, int(idx), bus or None, _num(pl), _num(pmin), _num(pmax)))
    return gpus


def _mib(value: object, unit: str = "MB") -> int | None:
    n = _num(str(value))
    if n is None:
        return None
    scale = {"B": 1 / 1048576, "KB": 1 / 1024, "MB": 1, "MIB": 1, "GB": 1024, "GIB": 1024}.get(unit.upper(), 1)
    return int(round(n * scale))


def parse_amd_smi(text: str) -> list[GpuInfo]:
    """`amd-smi static --asic --vram --bus --limit --json` (a list, or {"gpu_data": [...]})."""
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("gpu_data", [data])
    gpus = []
    for i, g in enumerate(data):
        asic = g.get("asic", {})
        vram = g.get("vram", {}).get("size", {})
        size = _mib(vram.get("value"), vram.get("unit", "MB")) if isinstance(vram, dict) else _mib(vram)
        arch = asic.get("target_graphics_version") or None
        gpus.append(GpuInfo("amd", asic.get("market_name") or "AMD GPU", arch if arch and arch != "N/A" else None,
                            size, int(g.get("gpu", i)), (g.get("bus") or {}).get("bdf"),
                            find_number(g.get("limit", {}), "socket_power_limit", "power_cap", "socket_power"),
                            find_number(g.get("limit", {}), "min_power_limit", "min_power_cap", "min_power"),
                            find_number(g.get("limit", {}), "max_power_limit", "max_power_cap", "max_power")))
    return gpus


def parse_rocm_smi(text: str) -> list[GpuInfo]:
    """`rocm-smi --showproductname --showmeminfo vram --showbus --showmaxpower --json`."""
    data = json.loads(text)
    gpus = []
    for key in sorted((k for k in data if k.startswith("card")), key=lambda k: int(k[4:])):
        c = data[key]
        vram = c.get("VRAM Total Memory (B)")
        arch = c.get("GFX Version") or c.get("gfx_version")
        gpus.append(GpuInfo("amd", c.get("Card Series") or c.get("Card series") or "AMD GPU",
                            arch if arch and arch.startswith("gfx") else None,
                            _mib(vram, "B") if vram else None, int(key[4:]), c.get("PCI Bus"),
                            _num(str(c.get("Max Graphics Package Power (W)", "")))))
    return gpus


def parse_rocminfo(text: str) -> list[GpuInfo]:
    gpus = []
    for agent in re.split(r"\n\*+\s*\n?Agent \d+", text)[1:]:
        if not re.search(r"Device Type:\s+GPU", agent):
            continue
        gfx = re.search(r"^\s+Name:\s+(gfx[0-9a-f]+)", agent, re.M)
        name = re.search(r"Marketing Name:\s+(.+)", agent)
        gpus.append(GpuInfo("amd", name[1].strip() if name else "AMD GPU", gfx[1] if gfx else None, None, len(gpus)))
    return gpus


def gfx_from_target_version(version: int) -> str | None:
    """KFD's gfx_target_version: 90006 -> gfx906, 90010 -> gfx90a, 110000 -> gfx1100."""
    if not version:
        return None
    major, minor, step = version // 10000, version // 100 % 100, version % 100
    return f"gfx{major}{minor:x}{step:x}"


def parse_sysfs(cards: list[dict], kfd_nodes: list[dict]) -> list[GpuInfo]:
    """cards: {vendor, device, vram_bytes, bus}; kfd_nodes: {gfx_target_version} of GPU nodes, same order."""
    amd = [c for c in cards if c.get("vendor") == "0x1002"]
    gfx = [gfx_from_target_version(n.get("gfx_target_version", 0)) for n in kfd_nodes
           if n.get("gfx_target_version")]
    gpus = []
    for i, c in enumerate(amd):
        known = AMD_DEVICE_IDS.get(c.get("device", ""), (f"AMD GPU {c.get('device', '')}".strip(), None))
        arch = gfx[i] if i < len(gfx) else known[1]
        vram = c.get("vram_bytes")
        gpus.append(GpuInfo("amd", known[0], arch, int(vram) // 1048576 if vram else None, i, c.get("bus")))
    return gpus
