"""CPU: a host's RAM served by ggml-rpc-server's CPU backend (no GPU, no toolkit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import re

from .base import CPU_IMAGE, DeviceUsage, ImageSpec, NativeBuild, Vendor

if TYPE_CHECKING:
    from ..inventory.config import Device, Host

# Effective bandwidth of weights streamed per thread, and what a socket tops out at.
# Measured on loopback here: 1 thread ≈ 22 GB/s, 2 threads ≈ 35 GB/s.
GBS_PER_THREAD = 20.0
MAX_GBS = 80.0
DEFAULT_THREADS = 4


class Cpu(Vendor):
    name = "cpu"
    title = "CPU"
    backend = "CPU"
    dockerfile = "cpu"
    is_gpu = False
    label = "CPU"
    default_decode_efficiency = 1.0  # its per-thread rate below is already what llama.cpp reaches

    def arch_error(self, arch: str) -> str | None:
        return "a cpu device has no arch"

    def image(self, host: Host, devices: list[Device]) -> ImageSpec:
        return ImageSpec(self.name, None, (), CPU_IMAGE, CPU_IMAGE, "cpu")

    def native_build(self, host: Host, devices: list[Device]) -> NativeBuild:
        archive = {"linux": "llama-{ref}-bin-ubuntu-x64.tar.gz", "windows": "llama-{ref}-bin-win-cpu-x64.zip",
                   "macos": "llama-{ref}-bin-macos-arm64.tar.gz"}[host.os]
        return NativeBuild((archive,), "")

    def usage_probe(self, devices: list[Device]) -> list[str] | None:
        # the worker container's PID 1 is ggml-rpc-server (exec'd): its resident memory is the device's use
        return ["cat", "/proc/1/status"]

    def parse_usage(self, text: str, devices: list[Device]) -> list[DeviceUsage | None]:
        m = re.search(r"^VmRSS:\s+([0-9]{1,12}) kB$", text, re.M)
        return [DeviceUsage(int(m[1]) / 1024) if m else None for _ in devices]

    def worker_args(self, devices: list[Device]) -> list[str]:
        return ["-t", str(devices[0].threads or DEFAULT_THREADS)]

    def bandwidth_gbs(self, device: Device) -> float:
        return min(MAX_GBS, GBS_PER_THREAD * (device.threads or DEFAULT_THREADS))


VENDOR = Cpu()
