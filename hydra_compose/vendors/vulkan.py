"""Vulkan: GPUs that llama.cpp reaches through Mesa's Vulkan drivers — Intel Arc and iGPUs,
AMD cards ROCm does not support (RDNA2 below gfx1030, most APUs). One image for all of them
(shaders are SPIR-V), the card handed to the container by its render node."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .base import (GpuInfo, ImageSpec, NativeBuild, Vendor, gid_groups, gid_lines, guessed_nodes, render_node,
                   sysfs_cards)

if TYPE_CHECKING:
    from ..inventory.config import Device, Host

IMAGE = "debian:trixie-slim"

# Memory bandwidth in GB/s (vendor datasheets); iGPUs share the host's DDR.
BANDWIDTH_BY_NAME = {
    "arc b580": 456, "arc b570": 380, "arc a770": 560, "arc a750": 512, "arc a580": 512, "arc a380": 186,
    "arc a310": 124, "arc pro b60": 456, "arc pro a60": 384,
    "rx 6600 xt": 256, "rx 6600": 224, "rx 6500 xt": 144, "rx 6700 xt": 384, "rx 5700 xt": 448,
    "rx 5700": 448, "rx 5600 xt": 288, "rx 580": 256, "rx 570": 224, "vega 64": 484, "vega 56": 410,
    "radeon 780m": 90, "radeon 890m": 120, "radeon 8060s": 256, "iris xe": 68, "uhd graphics": 50,
}
BANDWIDTH_BY_ARCH = {"xe-hpg": 512, "xe2": 456, "xe-lpg": 90, "gfx1032": 224, "gfx1031": 384, "gfx1010": 448,
                     "gfx1103": 90, "gfx1150": 120, "gfx1151": 256, "gfx803": 256, "gfx900": 484}
DEFAULT_GBS = 200.0
INTEL = "0x8086"
IGPU_BUS = "0000:00:02.0"  # where every Intel iGPU sits: shares the host's RAM, rarely beats the CPU worker
# Intel discrete cards by PCI device id: (name, arch, VRAM GiB; the A770 also came with 8)
INTEL_DEVICE_IDS = {"0x56a0": ("Arc A770", "xe-hpg", 16), "0x56a1": ("Arc A750", "xe-hpg", 8),
                    "0x56a2": ("Arc A580", "xe-hpg", 8), "0x56a5": ("Arc A380", "xe-hpg", 6),
                    "0x56a6": ("Arc A310", "xe-hpg", 4), "0xe20b": ("Arc B580", "xe2", 12),
                    "0xe20c": ("Arc B570", "xe2", 10), "0xe211": ("Arc Pro B60", "xe2", 24)}


class Vulkan(Vendor):
    name = "vulkan"
    title = "Vulkan (Mesa)"
    backend = "Vulkan"
    dockerfile = "vulkan"
    # informational: Mesa needs no build target (gfx1032, xe-hpg, ...)
    arch_pattern = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
    arch_example = "xe-hpg"
    arch_placeholder = "xe-hpg"
    label = "Vulkan"
    default_bandwidth_gbs = DEFAULT_GBS
    bandwidth_by_name = BANDWIDTH_BY_NAME
    bandwidth_by_arch = BANDWIDTH_BY_ARCH
    default_decode_efficiency = 0.4
    uses_render_nodes = True

    def image(self, host: Host, devices: list[Device]) -> ImageSpec:
        return ImageSpec(self.name, None, (), IMAGE, IMAGE, "vulkan",
                         (("BUILD_IMAGE", IMAGE), ("RUNTIME_IMAGE", IMAGE)))

    def native_build(self, host: Host, devices: list[Device]) -> NativeBuild:
        if host.os == "macos":
            return super().native_build(host, devices)
        archive = {"linux": "llama-{ref}-bin-ubuntu-vulkan-x64.tar.gz", "windows": "llama-{ref}-bin-win-vulkan-x64.zip"}
        return NativeBuild((archive[host.os],), "-DGGML_VULKAN=ON")

    def k8s_resource(self, device: Device) -> str | None:
        # AMD cards without ROCm kernels come through AMD's plugin (it hands over /dev/dri too);
        # Intel cards through Intel's GPU plugin (i915 driver)
        amd = (device.arch or "").startswith("gfx") or any(k in (device.name or "").lower() for k in ("radeon", "rx "))
        return "amd.com/gpu" if amd else "gpu.intel.com/i915"

    def gpu_access(self, host: Host, devices: list[Device]) -> dict:
        return {"devices": [f"/dev/dri/{render_node(d)}" for d in devices],
                "group_add": gid_groups(host)}

    def access_notes(self, host: Host, devices: list[Device]) -> list[str]:
        return guessed_nodes(host, devices)

    def env_lines(self, host: Host) -> list[str]:
        return gid_lines(host)

    def detect(self, sections: dict[str, str], notes: list[str]) -> list[GpuInfo]:
        """Intel discrete GPUs from sysfs (bus id, render node, device id); `vulkaninfo --summary`, where
        installed, names them. AMD cards without ROCm kernels come from the AMD record."""
        cards = [c for c in sysfs_cards(sections) if c.get("vendor") == INTEL]
        if any(c.get("bus") == IGPU_BUS for c in cards):
            notes.append("Intel integrated GPU skipped (it shares the host's RAM); add it as vendor: vulkan to use it")
        names = [n for n in parse_vulkaninfo(sections.get("vulkaninfo") or "") if "intel" in n.name.lower()]
        gpus = []
        for c in (c for c in cards if c.get("bus") != IGPU_BUS):
            name, arch, vram_gb = INTEL_DEVICE_IDS.get(c.get("device", ""), (f"Intel GPU {c.get('device', '')}", None,
                                                                              None))
            if len(names) > len(gpus):
                name = names[len(gpus)].name.replace("Intel(R) ", "").replace(" Graphics", "")
            gpus.append(GpuInfo(self.name, name, arch, vram_gb * 1024 if vram_gb else None, len(gpus), c.get("bus"),
                                render_node=c.get("render")))
        return gpus


def parse_vulkaninfo(text: str) -> list[GpuInfo]:
    """Discrete GPUs from `vulkaninfo --summary` (its Devices section); iGPUs and llvmpipe skipped."""
    gpus = []
    for block in re.split(r"\n(?=GPU\d+:)", text):
        m = re.match(r"GPU(\d+):", block)
        if not m:
            continue
        kind = re.search(r"deviceType\s*=\s*(\S+)", block)
        name = re.search(r"deviceName\s*=\s*(.+)", block)
        if not kind:
            continue
        if kind[1] == "PHYSICAL_DEVICE_TYPE_DISCRETE_GPU":
            gpus.append(GpuInfo("vulkan", name[1].strip() if name else "Vulkan GPU", None, None, len(gpus)))
    return gpus


VENDOR = Vulkan()
