"""Apple Silicon: llama.cpp's Metal backend on the unified memory of a Mac. Docker cannot pass
the GPU into a container, so a Metal device is always served by a native worker (launchd)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import RenderError
from .base import GpuInfo, ImageSpec, NativeBuild, Vendor

if TYPE_CHECKING:
    from ..inventory.config import Device, Host

# Unified-memory bandwidth in GB/s (Apple's specifications).
BANDWIDTH_BY_NAME = {
    "m1": 68, "m1 pro": 200, "m1 max": 400, "m1 ultra": 800, "m2": 100, "m2 pro": 200, "m2 max": 400,
    "m2 ultra": 800, "m3": 100, "m3 pro": 150, "m3 max": 400, "m3 ultra": 819, "m4": 120, "m4 pro": 273,
    "m4 max": 546, "m5": 153,
}


class Metal(Vendor):
    name = "metal"
    title = "Apple Metal"
    backend = "MTL"
    dockerfile = ""  # no image: native only
    arch_pattern = re.compile(r"^apple[0-9]{1,2}$")  # Metal GPU family, informational
    arch_example = "apple9"
    arch_placeholder = "apple9"
    label = "Metal"
    default_bandwidth_gbs = 100.0
    bandwidth_by_name = BANDWIDTH_BY_NAME
    default_decode_efficiency = 0.6

    def runtime_problem(self, runtime: str, os: str) -> str | None:
        if os != "macos" or runtime != "native":
            return "a metal device is an Apple GPU: its host needs os: macos and runtime: native"
        return None

    def default_reserve_gb(self, memory_gb: float) -> float:
        # vram_gb is what Metal may wire (recommendedMaxWorkingSetSize, ~2/3-3/4 of RAM); keep 1 GiB like a GPU
        return min(1.0, memory_gb / 4)

    def native_build(self, host: Host, devices: list[Device]) -> NativeBuild:
        return NativeBuild(("llama-{ref}-bin-macos-arm64.tar.gz",), "-DGGML_METAL=ON")

    def detect(self, sections: dict[str, str], notes: list[str]) -> list[GpuInfo]:
        """A Mac's GPU from sysctl: the chip, and what Metal may wire of the unified memory
        (macOS's default working-set limit: about three quarters of RAM)."""
        lines = (sections.get("apple") or "").split("\n")
        if len(lines) < 2 or not lines[0].startswith("Apple M") or not lines[1].strip().isdigit():
            return []
        ram = int(lines[1].strip())
        notes.append("Apple GPU: vram_gb is 75 % of RAM (macOS's default Metal limit); the host needs "
                     "runtime: native and os: macos")
        return [GpuInfo(self.name, lines[0].removeprefix("Apple ").strip()[:40], None, int(ram * 0.75) // 1048576, 0)]

    def image(self, host: Host, devices: list[Device]) -> ImageSpec:
        raise RenderError(f"{host.name} has Metal devices, which no container can reach",
                          "set runtime: native and os: macos on it (generate then writes a launchd service)")


VENDOR = Metal()
