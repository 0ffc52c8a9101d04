"""Relative decode speed of devices and links, for the speed-aware split.

Decoding one token streams every weight of a layer once, so a device's time
for its layers is about weights / memory bandwidth. Every RPC device adds
round trips (DESIGN.md: ~1.2 ms fixed per token on loopback, ~2 round trips
per token), and a remote host's link adds the activations' transfer time.
"""

from __future__ import annotations

import re

from ..inventory.config import Device, Host

# Memory bandwidth in GB/s of common cards (vendor datasheets). Matched as a
# substring of the device name, longest key first, case-insensitive.
GPU_BANDWIDTH_GBS = {
    "h200": 4800, "h100": 3350, "a100": 1935, "l40s": 864, "l4": 300, "a40": 696, "a10": 600,
    "v100": 900, "p100": 732, "p40": 347, "t4": 320,
    "rtx 5090": 1792, "rtx 5080": 960, "rtx 5070 ti": 896, "rtx 5070": 672, "rtx 5060 ti": 448,
    "rtx 4090": 1008, "rtx 4080 super": 736, "rtx 4080": 717, "rtx 4070 ti super": 672,
    "rtx 4070 ti": 504, "rtx 4070 super": 504, "rtx 4070": 504, "rtx 4060 ti": 288, "rtx 4060": 272,
    "rtx 3090 ti": 1008, "rtx 3090": 936, "rtx 3080 ti": 912, "rtx 3080": 760, "rtx 3070 ti": 608,
    "rtx 3070": 448, "rtx 3060 ti": 448, "rtx 3060": 360, "rtx 2080 ti": 616, "rtx 2080": 448,
    "rtx 2070": 448, "rtx 2060": 336, "gtx 1080 ti": 484, "titan v": 653,
    "mi300": 5300, "mi250": 3277, "mi210": 1638, "mi100": 1229, "mi60": 1024, "mi50": 1024,
    "radeon vii": 1024, "rx 7900 xtx": 960, "rx 7900 xt": 800, "rx 7900 gre": 576, "rx 7800 xt": 624,
    "rx 7700 xt": 432, "rx 6950 xt": 576, "rx 6900 xt": 512, "rx 6800 xt": 512, "rx 6800": 512,
    "rx 9070 xt": 640, "rx 9070": 640,
}
# When the name is unknown: a typical card of the architecture.
ARCH_BANDWIDTH_GBS = {
    "sm_50": 224, "sm_52": 224, "sm_60": 732, "sm_61": 347, "sm_70": 900, "sm_75": 448, "sm_80": 1935,
    "sm_86": 448, "sm_89": 504, "sm_90": 3350, "sm_100": 8000, "sm_120": 896,
    "gfx906": 1024, "gfx908": 1229, "gfx90a": 1638, "gfx942": 5300, "gfx1030": 512,
    "gfx1100": 960, "gfx1101": 624, "gfx1102": 288, "gfx1200": 640, "gfx1201": 640,
}
DEFAULT_GPU_BANDWIDTH_GBS = 400.0
# A CPU worker: effective bandwidth per thread, and what a socket tops out at.
# Measured on loopback here: 1 thread ≈ 22 GB/s, 2 threads ≈ 35 GB/s of weights streamed.
CPU_GBS_PER_THREAD = 20.0
CPU_MAX_GBS = 80.0
DEFAULT_CPU_THREADS = 4
# The master host's RAM when it runs MoE experts (llama-server's CPU backend, all its cores).
HOST_RAM_GBS = 40.0

# Fixed cost of one RPC device per generated token (round trips on loopback, measured).
RPC_FIXED_S = 1.2e-3
# Round trips per token and bytes per trip across a real link: activations (f32) each way.
RPC_ROUND_TRIPS = 2
DEFAULT_LINK_GBPS = 1.0
LAN_LATENCY_S = 0.25e-3  # one round trip on a switched gigabit LAN


def _name_key(name: str) -> str:
    return re.sub(r"\s+", " ", name.lower().replace("geforce", "").replace("radeon", "").replace("instinct", "")).strip()


def device_bandwidth_gbs(device: Device) -> float:
    if device.bandwidth_gbs:
        return device.bandwidth_gbs
    if device.vendor == "cpu":
        return min(CPU_MAX_GBS, CPU_GBS_PER_THREAD * (device.threads or DEFAULT_CPU_THREADS))
    name = _name_key(device.name or "")
    for key in sorted(GPU_BANDWIDTH_GBS, key=len, reverse=True):
        if key.replace("rtx ", "").replace("rx ", "") in name.replace("rtx ", "").replace("rx ", ""):
            return float(GPU_BANDWIDTH_GBS[key])
    return float(ARCH_BANDWIDTH_GBS.get(device.arch or "", DEFAULT_GPU_BANDWIDTH_GBS))


def rpc_overhead_s(host: Host, is_local_host: bool, n_embd: int) -> float:
    """Per-token cost of reaching one RPC device on this host from the master."""
    if is_local_host:
        return RPC_FIXED_S
    gbps = host.link_gbps or DEFAULT_LINK_GBPS
    transfer = RPC_ROUND_TRIPS * 2 * n_embd * 4 * 8 / (gbps * 1e9)
    return RPC_FIXED_S + RPC_ROUND_TRIPS * LAN_LATENCY_S + transfer
