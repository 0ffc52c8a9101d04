"""AMD: ROCm images, GPUs by CDI name or /dev/kfd + render node in compose, amd-smi / rocm-smi /
rocminfo / sysfs for inspect, amd-smi for power.

Inspect trusts, in order: amd-smi JSON, rocm-smi JSON, rocminfo, then sysfs (/sys/class/drm
and the KFD topology), so a host without ROCm tools is still inspected. Parsers are pure
functions over text, tested with recorded outputs of real cards.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import PowerError, RenderError
from .base import UBUNTU_VERSION, GpuInfo, ImageSpec, Interpolated, Limits, PowerControl, Sample, Vendor, number

if TYPE_CHECKING:
    from ..inventory.config import Device, Host

# ROCm releases, newest first, and the targets each one no longer ships kernels for:
# rocBLAS in 6.4 dropped gfx906 (MI50/MI60/Radeon VII); RDNA4 (gfx120x) needs 6.4.
ROCM_RELEASES = (("6.4.4", frozenset({"gfx803", "gfx900", "gfx906"})),
                 ("6.3.4", frozenset({"gfx803", "gfx1200", "gfx1201"})))

# PCI device id -> (name, gfx target) for AMD cards seen through sysfs alone.
DEVICE_IDS = {"0x66a0": ("Instinct MI50/MI60", "gfx906"), "0x66a1": ("Instinct MI50/MI60", "gfx906"),
              "0x66af": ("Radeon VII", "gfx906"), "0x738c": ("Instinct MI100", "gfx908"),
              "0x740f": ("Instinct MI210", "gfx90a"), "0x73bf": ("RX 6800/6900", "gfx1030"),
              "0x744c": ("RX 7900 XTX/XT", "gfx1100"), "0x7480": ("RX 7600/7700", "gfx1102"),
              "0x747e": ("RX 7800/7700 XT", "gfx1101"), "0x7550": ("RX 9070", "gfx1201")}

BANDWIDTH_BY_NAME = {
    "mi300": 5300, "mi250": 3277, "mi210": 1638, "mi100": 1229, "mi60": 1024, "mi50": 1024,
    "radeon vii": 1024, "rx 7900 xtx": 960, "rx 7900 xt": 800, "rx 7900 gre": 576, "rx 7800 xt": 624,
    "rx 7700 xt": 432, "rx 6950 xt": 576, "rx 6900 xt": 512, "rx 6800 xt": 512, "rx 6800": 512,
    "rx 9070 xt": 640, "rx 9070": 640,
}
BANDWIDTH_BY_ARCH = {"gfx906": 1024, "gfx908": 1229, "gfx90a": 1638, "gfx942": 5300, "gfx1030": 512,
                     "gfx1100": 960, "gfx1101": 624, "gfx1102": 288, "gfx1200": 640, "gfx1201": 640}


def rocm_release(archs: list[str]) -> str:
    for version, dropped in ROCM_RELEASES:
        if not dropped & set(archs):
            return version
    raise RenderError(f"no ROCm release runs all of {', '.join(sorted(set(archs)))} in one image",
                      "put these cards on different hosts (each host gets its own ROCm release), "
                      "or leave the oldest out of cluster.yaml")


def find_number(obj: object, *keys: str) -> float | None:
    """First numeric value under any of keys, anywhere in amd-smi's JSON (its layout moves between releases)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys:
                v = v.get("value") if isinstance(v, dict) else v
                found = number(str(v).split()[0]) if str(v).split() else None
                if found is not None:
                    return found
        for v in obj.values():
            found = find_number(v, *keys)
            if found is not None:
                return found
    if isinstance(obj, list):
        for v in obj:
            found = find_number(v, *keys)
            if found is not None:
                return found
    return None


def _mib(value: object, unit: str = "MB") -> int | None:
    n = number(str(value))
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
                            number(str(c.get("Max Graphics Package Power (W)", "")))))
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


def sysfs_cards(sections: dict[str, str]) -> list[dict]:
    """The probe's /sys/class/drm lines: vendor, device id, VRAM bytes, PCI bus id."""
    cards = []
    for line in (sections.get("sysfs_cards") or "").splitlines():
        f = line.split()
        if len(f) >= 3:
            cards.append({"vendor": f[0], "device": f[1], "vram_bytes": int(f[2]) if f[2].isdigit() else None,
                          "bus": f[3] if len(f) > 3 else None})
    return cards


def parse_sysfs(cards: list[dict], kfd_nodes: list[dict]) -> list[GpuInfo]:
    """cards: {vendor, device, vram_bytes, bus}; kfd_nodes: {gfx_target_version} of GPU nodes, same order."""
    amd = [c for c in cards if c.get("vendor") == "0x1002"]
    gfx = [gfx_from_target_version(n.get("gfx_target_version", 0)) for n in kfd_nodes
           if n.get("gfx_target_version")]
    gpus = []
    for i, c in enumerate(amd):
        known = DEVICE_IDS.get(c.get("device", ""), (f"AMD GPU {c.get('device', '')}".strip(), None))
        arch = gfx[i] if i < len(gfx) else known[1]
        vram = c.get("vram_bytes")
        gpus.append(GpuInfo("amd", known[0], arch, int(vram) // 1048576 if vram else None, i, c.get("bus")))
    return gpus


def _sysfs(sections: dict[str, str]) -> list[GpuInfo]:
    nodes = [{"gfx_target_version": int(x)} for x in (sections.get("sysfs_kfd") or "").split() if x.isdigit()]
    return parse_sysfs(sysfs_cards(sections), nodes)


class AmdPower(PowerControl):
    vendor = "amd"
    probe_argv = ["amd-smi", "version"]

    def _json(self, argv: list[str]) -> object:
        try:
            return json.loads(self.target.run(argv))
        except json.JSONDecodeError:
            raise PowerError(f"amd-smi on {self.target.host} printed no JSON", "update ROCm (amd-smi >= 6.1)") from None

    def read(self) -> Limits:
        data = self._json(["amd-smi", "static", "-g", str(self.index), "--limit", "--json"])
        cur = find_number(data, "power_cap", "socket_power_limit")
        lo = find_number(data, "min_power_cap", "min_power_limit")
        hi = find_number(data, "max_power_cap", "max_power_limit")
        if cur is None or lo is None or hi is None:
            raise PowerError(f"amd-smi on {self.target.host} did not report power caps for GPU {self.index}",
                             "update ROCm (amd-smi >= 6.1)")
        return Limits(cur, lo, hi)

    def set(self, watts: float) -> None:
        self.target.run(["amd-smi", "set", "-g", str(self.index), "--power-cap", f"{watts:g}"])

    def sampler_argv(self) -> list[str]:
        return ["amd-smi", "monitor", "-g", str(self.index), "-p", "-t", "-c", "-w", "1", "--json"]

    def parse_sample(self, line: str) -> Sample | None:
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            return None
        w = find_number(data, "power", "socket_power")
        t = find_number(data, "hotspot_temperature", "edge_temperature", "temperature")
        c = find_number(data, "gfx_clk", "sclk")
        return (w, t or 0.0, c or 0.0) if w is not None else None


class Amd(Vendor):
    name = "amd"
    title = "AMD ROCm"
    backend = "ROCm"
    dockerfile = "rocm"
    arch_pattern = re.compile(r"^gfx[0-9a-f]{3,4}$")
    arch_example = "gfx1100"
    arch_placeholder = "gfxNNNN"
    label = "AMD"
    bandwidth_by_name = BANDWIDTH_BY_NAME
    bandwidth_by_arch = BANDWIDTH_BY_ARCH
    power = AmdPower
    uses_render_nodes = True

    def image(self, host: Host, devices: list[Device]) -> ImageSpec:
        archs = tuple(sorted({d.arch for d in self.devices_with_arch(host, devices)}))
        release = rocm_release(list(archs))
        image = f"rocm/dev-ubuntu-{UBUNTU_VERSION}:{release}-complete"
        return ImageSpec(self.name, release, archs, image, image, f"rocm{release}-{'.'.join(archs)}",
                         (("BUILD_IMAGE", image), ("RUNTIME_IMAGE", image), ("GPU_TARGETS", ";".join(archs))))

    def template_context(self, first: ImageSpec, specs: list[ImageSpec]) -> dict:
        return {"gpu_targets": ";".join(first.archs)}

    def gpu_access(self, host: Host, devices: list[Device]) -> dict:
        indexes = [d.index or 0 for d in devices]
        if host.amd_cdi:  # the AMD container toolkit's CDI spec names every GPU
            return {"devices": [f"amd.com/gpu={i}" for i in indexes]}
        # without CDI: /dev/kfd, one render node per GPU and the host's numeric video/render GIDs
        return {"devices": ["/dev/kfd", *[f"/dev/dri/renderD{128 + i}" for i in indexes]],
                "group_add": [Interpolated("${VIDEO_GID:?set VIDEO_GID in .env (getent group video)}"),
                              Interpolated("${RENDER_GID:?set RENDER_GID in .env (getent group render)}")],
                "security_opt": ["seccomp=unconfined"]}

    def env_lines(self, host: Host) -> list[str]:
        if host.amd_cdi:
            return []
        return [f"VIDEO_GID={host.video_gid if host.video_gid is not None else 44}",
                f"RENDER_GID={host.render_gid if host.render_gid is not None else 992}"]

    def detect(self, sections: dict[str, str], notes: list[str]) -> list[GpuInfo]:
        attempts = (("amd_smi", parse_amd_smi), ("rocm_smi", parse_rocm_smi), ("rocminfo", parse_rocminfo))
        for key, parse in attempts:
            if (sections.get(key) or "").strip():
                try:
                    gpus = parse(sections[key])
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    notes.append(f"{key.replace('_', '-')} output not understood ({type(exc).__name__}); "
                                 "trying the next source")
                    continue
                if gpus:
                    return _fill_from_sysfs(gpus, sections)
        return _sysfs(sections)


def _fill_from_sysfs(gpus: list[GpuInfo], sections: dict[str, str]) -> list[GpuInfo]:
    """rocminfo knows no VRAM size: take it (and a missing arch) from sysfs, card by card."""
    fs = _sysfs(sections)
    return [replace(g, vram_mib=g.vram_mib or (fs[i].vram_mib if i < len(fs) else None),
                    arch=g.arch or (fs[i].arch if i < len(fs) else None),
                    bus_id=g.bus_id or (fs[i].bus_id if i < len(fs) else None)) for i, g in enumerate(gpus)]


VENDOR = Amd()
