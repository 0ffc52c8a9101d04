"""Relative decode speed of devices and links, for the speed-aware split.

Decoding one token streams every weight of a layer once, so a device's time
for its layers is about weights / memory bandwidth. Every RPC device adds
round trips (DESIGN.md: ~1.2 ms fixed per token on loopback, ~2 round trips
per token), and a remote host's link adds the activations' transfer time.
"""

from __future__ import annotations

from ..inventory.config import Device, Host

# The master host's RAM when it runs MoE experts (llama-server's CPU backend, all its cores).
HOST_RAM_GBS = 40.0

# Fixed cost of one RPC device per generated token (round trips on loopback, measured).
RPC_FIXED_S = 1.2e-3
# Round trips per token and bytes per trip across a real link: activations (f32) each way.
RPC_ROUND_TRIPS = 2
DEFAULT_LINK_GBPS = 1.0
LAN_LATENCY_S = 0.25e-3  # one round trip on a switched gigabit LAN


def device_bandwidth_gbs(device: Device) -> float:
    """bandwidth_gbs from cluster.yaml, else the vendor's table (card name, then arch)."""
    return device.bandwidth_gbs or device.record.bandwidth_gbs(device)


def rpc_overhead_s(host: Host, is_local_host: bool, n_embd: int) -> float:
    """Per-token cost of reaching one RPC device on this host from the master."""
    if is_local_host:
        return RPC_FIXED_S
    gbps = host.link_gbps or DEFAULT_LINK_GBPS
    transfer = RPC_ROUND_TRIPS * 2 * n_embd * 4 * 8 / (gbps * 1e9)
    return RPC_FIXED_S + RPC_ROUND_TRIPS * LAN_LATENCY_S + transfer
