"""How long one generated token takes, from first principles and, where `calibrate` ran, from
measurements (cluster.yaml's `measured:` blocks):

  token = master's own work (sampling, embeddings)
        + per used device: its fixed cost + dense bytes read / its decode rate
                           + active expert bytes read / its expert rate (compute-bound on CPUs)
        + per RPC server:  round trips x the link's RTT + activations both ways / the link's
                           throughput + the RPC stack's own cost (serialization, thread wake-ups)

Decoding one token streams every weight of a layer once (a MoE layer only its active experts),
so a device's part is bytes / rate. llama.cpp's RPC client pays one synchronous round trip per
server and token (inputs are sent and graphs run asynchronously; the result is read back), which
the delay-proxy measurements confirm (bench/speed_prediction.py). Figures a device or link has no
measurement for come from datasheet tables and the defaults below, and `plan` says which is which.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..inventory.config import Device, Host

# The master's own per-token work: sampling, the embedding lookup, the graph on its CPU.
MASTER_TOKEN_S = 0.3e-3
# The master host's RAM when it runs MoE experts (llama-server's CPU backend, all its cores).
HOST_RAM_GBS = 40.0

# Per RPC server and token, without a measurement: the RPC stack's own cost (each further server in
# a chain added 0.4-0.65 ms on loopback here, bench/speed_prediction.py), one synchronous round trip,
# a LAN's RTT and a gigabit link. Calibrations below the floor are noise of the subtraction.
RPC_STACK_S = 0.6e-3
RPC_STACK_MIN_S = 0.3e-3
RPC_ROUND_TRIPS = 1
LOOPBACK_RTT_S = 0.03e-3
LAN_RTT_S = 0.25e-3
DEFAULT_LINK_GBPS = 1.0
# A further device of the same server: its inputs come from the server's previous device directly.
SAME_SERVER_S = 0.2e-3
# Fixed per-token cost on a device (kernel launches, thread wake-ups) when not measured.
GPU_FIXED_S = 0.1e-3
CPU_FIXED_S = 0.2e-3
# CPUs run expert matmuls compute-bound: measured 2.2x slower than their bandwidth suggests
# (bench/moe_offload.py); GPUs stream experts like any weight.
CPU_EXPERT_SHARE = 0.45


@dataclass(frozen=True)
class DeviceSpeed:
    dense_gbs: float  # weights streamed per second while decoding
    expert_gbs: float  # active expert weights per second
    fixed_s: float
    measured: bool


@dataclass(frozen=True)
class HopCost:
    per_token_s: float  # what reaching this server costs each token
    measured: bool


def device_speed(device: Device) -> DeviceSpeed:
    """A device's decode rates: calibrate's measurement, else bandwidth_gbs, else the vendor's table."""
    m = device.measured
    if m is not None:
        return DeviceSpeed(m.decode_gbs, m.expert_gbs or m.decode_gbs, m.fixed_ms / 1000, True)
    record = device.record
    # bandwidth_gbs in cluster.yaml is what the device reaches; a datasheet figure is scaled to it
    gbs = device.bandwidth_gbs or record.bandwidth_gbs(device) * record.decode_efficiency(device)
    if device.is_gpu:
        return DeviceSpeed(gbs, gbs, GPU_FIXED_S, False)
    return DeviceSpeed(gbs, gbs * CPU_EXPERT_SHARE, CPU_FIXED_S, False)


def hop_cost(host: Host, is_master_host: bool, n_embd: int) -> HopCost:
    """Per-token cost of one RPC server on this host, seen from the master."""
    activations = 2 * n_embd * 4  # f32 activations to the server and back
    m = host.measured
    if m is not None:
        transfer = activations / 2 / (m.up_gbps * 1e9 / 8) + activations / 2 / (m.down_gbps * 1e9 / 8)
        return HopCost(RPC_ROUND_TRIPS * m.rtt_ms / 1000 + m.rpc_ms / 1000 + transfer, True)
    if is_master_host:
        return HopCost(RPC_STACK_S + RPC_ROUND_TRIPS * LOOPBACK_RTT_S, False)
    gbps = host.link_gbps or DEFAULT_LINK_GBPS
    return HopCost(RPC_STACK_S + RPC_ROUND_TRIPS * LAN_RTT_S + activations * 8 / (gbps * 1e9), False)
