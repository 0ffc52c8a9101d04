"""NVIDIA: CUDA images, GPUs by device id in compose, nvidia-smi / NVML for inspect and power."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import PowerError, RenderError
from .base import (DeviceUsage, UBUNTU_VERSION, GpuInfo, ImageSpec, Limits, NativeBuild, ParseError, PowerControl, Sample, Vendor,
                   number, version_tuple)

if TYPE_CHECKING:
    from ..inventory.config import Device, Host

# CUDA releases we pick from, newest first: (version, lowest sm, highest sm it builds, the oldest
# Linux driver its runtime image starts on — NVIDIA's release notes, "CUDA Toolkit and Corresponding
# Driver Versions"; the container toolkit refuses an image whose CUDA the driver does not support).
# sm_50..sm_72 were dropped in CUDA 13; sm_100/sm_120 need 12.8; Kepler left with 12.0.
CUDA_RELEASES = (("13.0.1", 75, 121, "580.82.07"), ("12.9.1", 50, 121, "575.57.08"),
                 ("12.8.1", 50, 120, "570.124.06"), ("12.6.3", 50, 90, "560.35.05"),
                 ("12.4.1", 50, 90, "550.54.15"), ("12.2.2", 50, 90, "535.104.05"), ("11.8.0", 35, 90, "520.61.05"))
# the releases a host may also name itself (toolkit: {cuda: X.Y.Z}): major.minor -> (lowest, highest sm, driver)
CUDA_KNOWN = {v.rsplit(".", 1)[0]: (lo, hi, drv) for v, lo, hi, drv in CUDA_RELEASES} | {
    "13.1": (75, 121, "590.44.01"), "12.5": (50, 90, "555.42.06"), "12.3": (50, 90, "545.23.08"),
    "12.1": (50, 90, "530.30.02"), "12.0": (50, 90, "525.60.13")}

# Compute capability by card name, for drivers whose nvidia-smi rejects compute_cap.
NAME_ARCH = (("rtx 50", "sm_120"), ("rtx pro 6000", "sm_120"), ("rtx 40", "sm_89"), ("l40", "sm_89"),
             ("l4", "sm_89"), ("rtx 30", "sm_86"), ("a40", "sm_86"), ("a10", "sm_86"), ("rtx a", "sm_86"),
             ("rtx 20", "sm_75"), ("gtx 16", "sm_75"), ("titan rtx", "sm_75"), ("t4", "sm_75"),
             ("quadro rtx", "sm_75"), ("a100", "sm_80"), ("a30", "sm_80"), ("h100", "sm_90"),
             ("h200", "sm_90"), ("gh200", "sm_90"), ("v100", "sm_70"), ("titan v", "sm_70"),
             ("p100", "sm_60"), ("p40", "sm_61"), ("p4", "sm_61"), ("gtx 10", "sm_61"), ("titan x", "sm_61"),
             ("gtx 9", "sm_52"), ("m40", "sm_52"))

# Memory bandwidth in GB/s (vendor datasheets), by card name, then by arch.
BANDWIDTH_BY_NAME = {
    "h200": 4800, "h100": 3350, "a100": 1935, "l40s": 864, "l4": 300, "a40": 696, "a10": 600,
    "v100": 900, "p100": 732, "p40": 347, "t4": 320,
    "rtx 5090": 1792, "rtx 5080": 960, "rtx 5070 ti": 896, "rtx 5070": 672, "rtx 5060 ti": 448,
    "rtx 4090": 1008, "rtx 4080 super": 736, "rtx 4080": 717, "rtx 4070 ti super": 672,
    "rtx 4070 ti": 504, "rtx 4070 super": 504, "rtx 4070": 504, "rtx 4060 ti": 288, "rtx 4060": 272,
    "rtx 3090 ti": 1008, "rtx 3090": 936, "rtx 3080 ti": 912, "rtx 3080": 760, "rtx 3070 ti": 608,
    "rtx 3070": 448, "rtx 3060 ti": 448, "rtx 3060": 360, "rtx 2080 ti": 616, "rtx 2080": 448,
    "rtx 2070": 448, "rtx 2060": 336, "gtx 1080 ti": 484, "titan v": 653,
}
BANDWIDTH_BY_ARCH = {"sm_50": 224, "sm_52": 224, "sm_60": 732, "sm_61": 347, "sm_70": 900, "sm_75": 448,
                     "sm_80": 1935, "sm_86": 448, "sm_89": 504, "sm_90": 3350, "sm_100": 8000, "sm_120": 896}


def sm(arch: str) -> int:
    return int(re.match(r"sm_(\d+)", arch).group(1))  # type: ignore[union-attr]


def cuda_release(host: Host, archs: list[str]) -> tuple[str, tuple[str, ...]]:
    """The CUDA release of this host's image, and notes: the newest that builds every arch and
    starts on the host's driver (when recorded), or the host's own toolkit: {cuda: ...}."""
    nums = sorted({sm(a) for a in archs})
    driver = host.nvidia_driver
    wanted = host.toolkit.cuda if host.toolkit else None
    if wanted:
        return _checked_override(host, wanted, nums), ()
    builds = [(v, drv) for v, lo, hi, drv in CUDA_RELEASES if all(lo <= n <= hi for n in nums)]
    if not builds:
        old = [a for a in archs if sm(a) < 50]
        raise RenderError(f"no CUDA release builds all of {', '.join(sorted(set(archs)))} in one image",
                          f"serve {', '.join(old) or 'the oldest cards'} with another llama.cpp build, "
                          "or leave them out of cluster.yaml")
    if driver is None:
        version, needs = builds[0]
        return version, (f"{host.name}: the CUDA {version} image needs NVIDIA driver {needs} or newer and the "
                         "host's driver is not recorded; run `hydra-compose inspect --write` (or set "
                         "toolkit: {cuda: ...}) if it is older",)
    runs = [v for v, drv in builds if version_tuple(driver) >= version_tuple(drv)]
    if not runs:
        version, needs = builds[-1]
        raise RenderError(f"{host.name}'s NVIDIA driver {driver} is too old for every CUDA release that builds "
                          f"sm_{', sm_'.join(map(str, nums))} (CUDA {version} needs {needs})",
                          f"update the driver to {needs} or newer")
    return runs[0], ()


def _checked_override(host: Host, wanted: str, nums: list[int]) -> str:
    known = CUDA_KNOWN.get(".".join(wanted.split(".")[:2]))
    if known is None or wanted.count(".") != 2:
        raise RenderError(f"{host.name}: toolkit cuda {wanted} is not a CUDA release we know",
                          f"use one of {', '.join(v for v, *_ in CUDA_RELEASES)} (major.minor.patch)")
    lo, hi, needs = known
    bad = [n for n in nums if not lo <= n <= hi]
    if bad:
        raise RenderError(f"{host.name}: CUDA {wanted} cannot build sm_{bad[0]}",
                          f"CUDA {wanted} builds sm_{lo} to sm_{hi}: choose another toolkit or remove the override")
    if host.nvidia_driver and version_tuple(host.nvidia_driver) < version_tuple(needs):
        raise RenderError(f"{host.name}: CUDA {wanted} needs NVIDIA driver {needs}, the host has {host.nvidia_driver}",
                          "update the driver, or name an older toolkit cuda")
    return wanted


def arch_from_name(name: str) -> str | None:
    low = name.lower()
    for key, arch in NAME_ARCH:
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
            arch = f"sm_{cc.replace('.', '')}" if re.fullmatch(r"\d+\.\d", cc) else arch_from_name(name)
        else:
            idx, name, mem, pl, pmin, pmax, bus = f
            arch = arch_from_name(name)
        vram = number(mem)
        gpus.append(GpuInfo("nvidia", name.removeprefix("NVIDIA ").removeprefix("GeForce "), arch,
                            int(vram) if vram else None, int(idx), bus or None, number(pl), number(pmin),
                            number(pmax)))
    return gpus


def nvml_gpus() -> list[GpuInfo] | None:
    """This machine's NVIDIA GPUs through NVML when nvidia-ml-py and the driver library load; else None."""
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


class NvidiaPower(PowerControl):
    vendor = "nvidia"
    probe_argv = ["nvidia-smi", "-L"]

    def read(self) -> Limits:
        out = self.target.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=power.limit,power.min_limit,"
                               "power.max_limit", "--format=csv,noheader,nounits"])
        values = [number(x) for x in (out.splitlines() or [""])[0].split(",")[:3]]
        if len(values) != 3 or any(v is None or v <= 0 for v in values):
            raise PowerError(f"unexpected nvidia-smi output {out.strip()[:60]!r} on {self.target.host}",
                             "update the NVIDIA driver")
        cur, lo, hi = values
        return Limits(cur, lo, hi)  # type: ignore[arg-type]

    def set(self, watts: float) -> None:
        self.target.run(["nvidia-smi", "-i", str(self.index), "-pl", f"{watts:g}"])

    def sampler_argv(self) -> list[str]:
        return ["nvidia-smi", "-i", str(self.index), "--query-gpu=power.draw,temperature.gpu,clocks.sm",
                "--format=csv,noheader,nounits", "-lms", "500"]

    def parse_sample(self, line: str) -> Sample | None:
        values = [number(x) for x in line.strip().split(",")[:3]]
        if len(values) != 3 or any(v is None for v in values):
            return None
        return values[0], values[1], values[2]  # type: ignore[return-value]


class Nvidia(Vendor):
    name = "nvidia"
    title = "NVIDIA CUDA"
    backend = "CUDA"
    dockerfile = "cuda"
    arch_pattern = re.compile(r"^sm_(\d{2,3})a?$")
    arch_example = "sm_89"
    arch_placeholder = "sm_XX"
    label = "NVIDIA"
    bandwidth_by_name = BANDWIDTH_BY_NAME
    bandwidth_by_arch = BANDWIDTH_BY_ARCH
    decode_efficiency_by_arch = {"sm_5": 0.45, "sm_6": 0.5, "sm_7": 0.5, "sm_75": 0.55, "sm_8": 0.57, "sm_9": 0.45,
                                 "sm_1": 0.55}
    default_decode_efficiency = 0.55
    power = NvidiaPower

    def runtime_problem(self, runtime: str, os: str) -> str | None:
        if os == "macos":
            return "no NVIDIA GPU serves llama.cpp on macOS: use vendor: metal (Apple GPU) or cpu"
        return None

    def image(self, host: Host, devices: list[Device]) -> ImageSpec:
        archs = [d.arch for d in self.devices_with_arch(host, devices)]
        release, notes = cuda_release(host, archs)
        targets = tuple(sorted({str(sm(a)) for a in archs}, key=int))
        ubuntu = "22.04" if version_tuple(release) < (12, 5) else UBUNTU_VERSION  # 24.04 images start at 12.5
        build = f"nvidia/cuda:{release}-devel-ubuntu{ubuntu}"
        runtime = f"nvidia/cuda:{release}-runtime-ubuntu{ubuntu}"
        return ImageSpec(self.name, release, targets, build, runtime, f"cuda{release}-sm{'.'.join(targets)}",
                         (("BUILD_IMAGE", build), ("RUNTIME_IMAGE", runtime),
                          ("CUDA_ARCHITECTURES", ";".join(targets))), notes)

    def native_build(self, host: Host, devices: list[Device]) -> NativeBuild:
        """llama.cpp's release archives: Windows CUDA 12.4 / 13.4 zips, Ubuntu CUDA 12.8 / 13.4 tarballs,
        each with its CUDA runtime archive; 13.4 where a card needs it (sm_120) or the driver runs it."""
        archs = [d.arch for d in self.devices_with_arch(host, devices)]
        new = any(sm(a) >= 100 for a in archs) or bool(host.nvidia_driver and version_tuple(host.nvidia_driver) >= (580,))
        flags = f"-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES={';'.join(sorted({str(sm(a)) for a in archs}, key=int))}"
        if host.os == "windows":
            cuda = "13.4" if new else "12.4"
            return NativeBuild((f"llama-{{ref}}-bin-win-cuda-{cuda}-x64.zip", f"cudart-llama-bin-win-cuda-{cuda}-x64.zip"),
                               flags)
        cuda = "13.4" if new else "12.8"
        return NativeBuild((f"llama-{{ref}}-bin-ubuntu-cuda-{cuda}-x64.tar.gz",
                            f"cudart-llama-{{ref}}-bin-ubuntu-cuda-{cuda}-x64.tar.gz"), flags)

    def template_context(self, first: ImageSpec, specs: list[ImageSpec]) -> dict:
        return {"cuda_version": first.release, "cuda_architectures": ";".join(first.archs)}

    def usage_probe(self, devices: list[Device]) -> list[str] | None:
        return ["nvidia-smi", "--query-gpu=index,pci.bus_id,memory.used,utilization.gpu,power.draw,temperature.gpu",
                "--format=csv,noheader,nounits"]

    def parse_usage(self, text: str, devices: list[Device]) -> list[DeviceUsage | None]:
        """Rows of the container's GPUs (renumbered from 0, in the devices' order); matched by PCI bus
        id where inspect recorded it."""
        rows = []
        for line in text.splitlines()[:64]:
            cells = [c.strip() for c in line.split(",")]
            if len(cells) == 6 and number(cells[0]) is not None:
                rows.append((cells[1].lower(), DeviceUsage(number(cells[2]), number(cells[3]), number(cells[4]),
                                                           number(cells[5]))))
        out: list[DeviceUsage | None] = []
        for i, d in enumerate(devices):
            by_bus = [u for bus, u in rows if d.bus_id and _bus(bus) == _bus(d.bus_id)]
            out.append(by_bus[0] if by_bus else (rows[i][1] if i < len(rows) and not d.bus_id else None))
        return out

    def k8s_resource(self, device: Device) -> str | None:
        return "nvidia.com/gpu"  # NVIDIA's device plugin / GPU Operator

    def gpu_access(self, host: Host, devices: list[Device]) -> dict:
        return {"deploy": {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "device_ids": [str(d.index or 0) for d in devices], "capabilities": ["gpu"]}]}}}}

    def detect(self, sections: dict[str, str], notes: list[str]) -> list[GpuInfo]:
        try:
            if sections.get("nvidia_smi_nocc"):
                notes.append("nvidia-smi rejects compute_cap (old driver): arch taken from the card name")
                return parse_nvidia_smi(sections["nvidia_smi_nocc"], with_compute_cap=False)
            if sections.get("nvidia_smi", "").strip():
                return parse_nvidia_smi(sections["nvidia_smi"])
        except ParseError as exc:
            notes.append(f"nvidia-smi output not understood ({exc}); NVIDIA GPUs skipped")
        return []


def _bus(bus_id: str) -> str:
    """nvidia-smi's 00000000:02:00.0 and sysfs' 0000:02:00.0 alike: the last three fields."""
    return ":".join(bus_id.lower().split(":")[-2:])


VENDOR = Nvidia()
