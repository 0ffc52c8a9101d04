"""AMD: ROCm images, GPUs by CDI name or /dev/kfd + render node in compose, amd-smi / rocm-smi /
rocminfo / sysfs for inspect, amd-smi for power.

Inspect trusts, in order: amd-smi JSON, rocm-smi JSON, rocminfo, then sysfs (/sys/class/drm
and the KFD topology), so a host without ROCm tools is still inspected. Parsers are pure
functions over text, tested with recorded outputs of real cards.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import PowerError, RenderError
from .base import (DeviceUsage, UBUNTU_VERSION, GpuInfo, ImageSpec, Limits, NativeBuild, PowerControl, Sample, Vendor,
                   gid_groups, gid_lines, guessed_nodes, number, render_node, sysfs_cards, version_tuple)

if TYPE_CHECKING:
    from ..inventory.config import Device, Host

# ROCm releases we pick from, newest first, and the targets each one no longer ships kernels for:
# rocBLAS in 6.4 dropped gfx906 (MI50/MI60/Radeon VII); RDNA4 (gfx120x) needs 6.4.
ROCM_RELEASES = (("6.4.4", frozenset({"gfx803", "gfx900", "gfx906"})),
                 ("6.3.4", frozenset({"gfx803", "gfx1200", "gfx1201"})))
# releases a host may name itself (toolkit: {rocm: X.Y.Z}), by major.minor
ROCM_DROPPED = {"6.2": frozenset({"gfx803", "gfx1200", "gfx1201"}), "6.3": ROCM_RELEASES[1][1],
                "6.4": ROCM_RELEASES[0][1], "7.0": ROCM_RELEASES[0][1], "7.1": ROCM_RELEASES[0][1]}
# gfx906 on a release without its kernels works with rocBLAS's gfx906 files copied from the last
# release that had them (what MI50 owners on ROCm 7 do): the Dockerfile's rocblas-kernels stage.
KERNELS_RELEASE = "6.3.4"
KERNEL_ARCHS = frozenset({"gfx906"})

# PCI device id -> (name, gfx target) for AMD cards seen through sysfs alone.
DEVICE_IDS = {"0x66a0": ("Instinct MI50/MI60", "gfx906"), "0x66a1": ("Instinct MI50/MI60", "gfx906"),
              "0x66af": ("Radeon VII", "gfx906"), "0x738c": ("Instinct MI100", "gfx908"),
              "0x740f": ("Instinct MI210", "gfx90a"), "0x73bf": ("RX 6800/6900", "gfx1030"),
              "0x744c": ("RX 7900 XTX/XT", "gfx1100"), "0x7480": ("RX 7600/7700", "gfx1102"),
              "0x747e": ("RX 7800/7700 XT", "gfx1101"), "0x7550": ("RX 9070", "gfx1201")}

# Targets ROCm's libraries ship kernels for (gfx906 up to 6.3). Other AMD GPUs (RX 6600, APUs, Polaris)
# run llama.cpp through Vulkan: inspect reports them as vendor vulkan.
ROCM_TARGETS = frozenset({"gfx906", "gfx908", "gfx90a", "gfx942", "gfx950", "gfx1030", "gfx1100", "gfx1101",
                          "gfx1102", "gfx1151", "gfx1200", "gfx1201"})

BANDWIDTH_BY_NAME = {
    "mi300": 5300, "mi250": 3277, "mi210": 1638, "mi100": 1229, "mi60": 1024, "mi50": 1024,
    "radeon vii": 1024, "rx 7900 xtx": 960, "rx 7900 xt": 800, "rx 7900 gre": 576, "rx 7800 xt": 624,
    "rx 7700 xt": 432, "rx 6950 xt": 576, "rx 6900 xt": 512, "rx 6800 xt": 512, "rx 6800": 512,
    "rx 9070 xt": 640, "rx 9070": 640,
}
BANDWIDTH_BY_ARCH = {"gfx906": 1024, "gfx908": 1229, "gfx90a": 1638, "gfx942": 5300, "gfx1030": 512,
                     "gfx1100": 960, "gfx1101": 624, "gfx1102": 288, "gfx1200": 640, "gfx1201": 640}


def rocm_release(host: Host, archs: list[str]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(release, targets whose rocBLAS kernels come from KERNELS_RELEASE, notes) for this host."""
    wanted = host.toolkit.rocm if host.toolkit else None
    if wanted:
        dropped = ROCM_DROPPED.get(".".join(wanted.split(".")[:2]))
        if dropped is None or wanted.count(".") != 2:
            raise RenderError(f"{host.name}: toolkit rocm {wanted} is not a ROCm release we know",
                              f"use one of {', '.join(f'{v}.x' for v in ROCM_DROPPED)} (major.minor.patch)")
        missing = sorted(dropped & set(archs))
        borrowed = tuple(a for a in missing if a in KERNEL_ARCHS)
        if set(missing) - set(borrowed):
            raise RenderError(f"{host.name}: ROCm {wanted} has no kernels for {', '.join(sorted(set(missing) - set(borrowed)))}",
                              "choose another toolkit rocm or remove the override")
        return wanted, borrowed, ()
    runs = [v for v, dropped in ROCM_RELEASES if not dropped & set(archs)]
    if not runs:
        raise RenderError(f"no ROCm release runs all of {', '.join(sorted(set(archs)))} in one image",
                          "put these cards on different hosts (each host gets its own ROCm release), "
                          "or leave the oldest out of cluster.yaml")
    if host.rocm_version is None:
        return runs[0], (), ()
    # the host's kernel driver came with its ROCm: prefer an image no newer than that
    host_minor = version_tuple(host.rocm_version)[:2]
    older = [v for v in runs if version_tuple(v)[:2] <= host_minor]
    if older:
        return older[0], (), ()
    return runs[-1], (), (f"{host.name} has ROCm {host.rocm_version}; its image uses ROCm {runs[-1]}: if the "
                          "worker sees no GPU, update the host's amdgpu driver (amdgpu-dkms) or set toolkit: {rocm: ...}",)


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
        gpus.append(GpuInfo("amd", known[0], arch, int(vram) // 1048576 if vram else None, i, c.get("bus"),
                            render_node=c.get("render")))
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


# The index-th AMD card's hwmon folder (the one with power1_cap); index and root are arguments.
_HWMON = ('i=0; for d in "$2"/class/drm/card[0-9]*/device; do c=${d%/device}; case "${c##*/}" in *-*) continue ;; esac; '
          '[ "$(cat "$d/vendor" 2>/dev/null)" = 0x1002 ] || continue; '
          'if [ "$i" = "$1" ]; then for h in "$d"/hwmon/hwmon*; do [ -e "$h/power1_cap" ] && echo "$h" && exit 0; '
          'done; exit 3; fi; i=$((i + 1)); done; exit 3')


class SysfsAmdPower(PowerControl):
    """Without amd-smi: the amdgpu driver's own hwmon files (what rocm-smi --setpoweroverdrive writes),
    in microwatts: power1_cap, power1_cap_min/max; power1_average and temp1_input to sample."""

    vendor = "amd"

    def __init__(self, target, index: int, sysfs: str = "/sys") -> None:  # noqa: ANN001
        super().__init__(target, index)
        self.sysfs, self._hwmon = sysfs, ""

    @property
    def hwmon(self) -> str:
        if not self._hwmon:
            try:
                self._hwmon = self.target.run(["sh", "-c", _HWMON, "sh", str(self.index), self.sysfs]).strip()
            except PowerError:
                raise PowerError(f"{self.target.host}: no amd-smi and no power1_cap in sysfs for AMD GPU {self.index}",
                                 "install amd-smi (ROCm >= 6.1) or check the GPU index") from None
        return self._hwmon

    def read(self) -> Limits:
        out = self.target.run(["cat", *(f"{self.hwmon}/{f}" for f in ("power1_cap", "power1_cap_min", "power1_cap_max"))])
        values = [number(x) for x in out.split()]
        if len(values) != 3 or any(v is None for v in values):
            raise PowerError(f"{self.target.host}: unexpected power1_cap values {out.strip()[:60]!r}",
                             "check the amdgpu driver")
        cur, lo, hi = (v / 1e6 for v in values)  # type: ignore[operator]
        return Limits(cur, lo, hi)

    def set(self, watts: float) -> None:
        self.target.run(["sh", "-c", 'echo "$1" > "$2"', "sh", str(int(watts * 1e6)), f"{self.hwmon}/power1_cap"])

    def sampler_argv(self) -> list[str]:
        return ["sh", "-c", 'while :; do echo "$(cat "$1/power1_average" 2>/dev/null || cat "$1/power1_input") '
                '$(cat "$1/temp1_input" 2>/dev/null || echo 0)"; sleep 0.5; done', "sh", self.hwmon]

    def parse_sample(self, line: str) -> Sample | None:
        values = [number(x) for x in line.split()]
        if len(values) != 2 or any(v is None for v in values):
            return None
        return values[0] / 1e6, values[1] / 1000, 0.0  # type: ignore[operator]


def amd_power(target, index: int) -> PowerControl:  # noqa: ANN001 - runtime.ssh.Target
    """amd-smi where it is installed, else the driver's sysfs files (HYDRA_SYSFS_ROOT: tests)."""
    try:
        target.run(AmdPower.probe_argv)
        return AmdPower(target, index)
    except PowerError:
        root = os.environ.get("HYDRA_SYSFS_ROOT", "/sys") if not getattr(target, "ssh", None) else "/sys"
        return SysfsAmdPower(target, index, root)


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
    decode_efficiency_by_arch = {"gfx906": 0.25, "gfx908": 0.3, "gfx90a": 0.35, "gfx94": 0.35, "gfx103": 0.45,
                                 "gfx110": 0.5, "gfx115": 0.5, "gfx120": 0.5}
    default_decode_efficiency = 0.45
    power = staticmethod(amd_power)
    uses_render_nodes = True

    def runtime_problem(self, runtime: str, os: str) -> str | None:
        if os == "macos":
            return "no AMD GPU serves llama.cpp on macOS: use vendor: metal (Apple GPU) or cpu"
        if os == "windows":
            return "on Windows an AMD GPU runs llama.cpp through Vulkan: use vendor: vulkan"
        return None

    def image(self, host: Host, devices: list[Device]) -> ImageSpec:
        archs = tuple(sorted({d.arch for d in self.devices_with_arch(host, devices)}))
        release, borrowed, notes = rocm_release(host, list(archs))
        image = f"rocm/dev-ubuntu-{UBUNTU_VERSION}:{release}-complete"
        args = [("BUILD_IMAGE", image), ("RUNTIME_IMAGE", image), ("GPU_TARGETS", ";".join(archs))]
        tag = f"rocm{release}-{'.'.join(archs)}"
        if borrowed:
            args += [("ROCBLAS_KERNELS_IMAGE", f"rocm/dev-ubuntu-{UBUNTU_VERSION}:{KERNELS_RELEASE}-complete"),
                     ("ROCBLAS_KERNEL_TARGETS", " ".join(borrowed))]
            tag += f"-kernels{KERNELS_RELEASE}"
        return ImageSpec(self.name, release, archs, image, image, tag, tuple(args), notes)

    def native_build(self, host: Host, devices: list[Device]) -> NativeBuild:
        if host.os != "linux":
            return super().native_build(host, devices)
        targets = ";".join(sorted({d.arch for d in self.devices_with_arch(host, devices)}))
        return NativeBuild((), f"-DGGML_HIP=ON -DGPU_TARGETS={targets}")  # the host's own ROCm builds it

    def template_context(self, first: ImageSpec, specs: list[ImageSpec]) -> dict:
        # the rocBLAS kernel stage is in the Dockerfile only when some host borrows kernels
        borrow = any(dict(s.build_args).get("ROCBLAS_KERNEL_TARGETS") for s in specs)
        return {"gpu_targets": ";".join(first.archs), "borrow_kernels": borrow}

    def usage_probe(self, devices: list[Device]) -> list[str] | None:
        # the amdgpu driver's sysfs, readable in any container: VRAM bytes, busy %, power (uW), edge temp (mC)
        script = ('for n in "$@"; do d=/sys/class/drm/$n/device; h=$(ls -d $d/hwmon/hwmon* 2>/dev/null | head -1); '
                  'echo "$n $(cat $d/mem_info_vram_used 2>/dev/null || echo -) $(cat $d/gpu_busy_percent 2>/dev/null '
                  '|| echo -) $(cat $h/power1_average 2>/dev/null || cat $h/power1_input 2>/dev/null || echo -) '
                  '$(cat $h/temp1_input 2>/dev/null || echo -)"; done')
        return ["sh", "-c", script, "usage", *[render_node(d) for d in devices]]

    def parse_usage(self, text: str, devices: list[Device]) -> list[DeviceUsage | None]:
        found = {}
        for line in text.splitlines()[:64]:
            cells = line.split()
            if len(cells) == 5 and re.fullmatch(r"renderD[0-9]{1,4}", cells[0]):
                vram, busy, power, temp = (number(c) for c in cells[1:])
                found[cells[0]] = DeviceUsage(None if vram is None else vram / 1024**2, busy,
                                              None if power is None else power / 1e6,
                                              None if temp is None else temp / 1000)
        return [found.get(render_node(d)) for d in devices]

    def k8s_resource(self, device: Device) -> str | None:
        return "amd.com/gpu"  # AMD's k8s-device-plugin (ROCm)

    def gpu_access(self, host: Host, devices: list[Device]) -> dict:
        if host.amd_cdi:  # the AMD container toolkit's CDI spec names every GPU
            return {"devices": [f"amd.com/gpu={d.index or 0}" for d in devices]}
        # without CDI: /dev/kfd, each GPU's render node and the host's numeric video/render GIDs
        return {"devices": ["/dev/kfd", *[f"/dev/dri/{render_node(d)}" for d in devices]],
                "group_add": gid_groups(host),
                "security_opt": ["seccomp=unconfined"]}

    def access_notes(self, host: Host, devices: list[Device]) -> list[str]:
        return [] if host.amd_cdi else guessed_nodes(host, devices)

    def env_lines(self, host: Host) -> list[str]:
        return [] if host.amd_cdi else gid_lines(host)

    def detect(self, sections: dict[str, str], notes: list[str]) -> list[GpuInfo]:
        attempts = (("amd_smi", parse_amd_smi), ("rocm_smi", parse_rocm_smi), ("rocminfo", parse_rocminfo))
        for key, parse in attempts:
            if (sections.get(key) or "").strip():
                try:
                    gpus = parse(sections[key])
                except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
                        OverflowError) as exc:
                    notes.append(f"{key.replace('_', '-')} output not understood ({type(exc).__name__}); "
                                 "trying the next source")
                    continue
                if gpus:
                    return _rocm_or_vulkan(_fill_from_sysfs(gpus, sections), notes)
        return _rocm_or_vulkan(_sysfs(sections), notes)


def _rocm_or_vulkan(gpus: list[GpuInfo], notes: list[str]) -> list[GpuInfo]:
    out = []
    for g in gpus:
        if g.arch and g.arch not in ROCM_TARGETS:
            notes.append(f"{g.name} ({g.arch}) has no ROCm kernels: listed as a Vulkan device")
            g = replace(g, vendor="vulkan", arch=g.arch, power_limit_w=None, power_min_w=None, power_max_w=None)
        out.append(g)
    return out


def _fill_from_sysfs(gpus: list[GpuInfo], sections: dict[str, str]) -> list[GpuInfo]:
    """rocminfo knows no VRAM size: take it (and a missing arch) from sysfs, card by card."""
    fs = _sysfs(sections)
    return [replace(g, vram_mib=g.vram_mib or (fs[i].vram_mib if i < len(fs) else None),
                    arch=g.arch or (fs[i].arch if i < len(fs) else None),
                    bus_id=g.bus_id or (fs[i].bus_id if i < len(fs) else None)) for i, g in enumerate(gpus)]


VENDOR = Amd()
