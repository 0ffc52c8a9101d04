"""Reading what llama-server really did from its -lv 4 log: per device the layers,
and the model, KV and compute buffer sizes. Every RPC device is printed as
"RPC0[host:port]", so devices are keyed by the endpoint in brackets."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BUFFER = re.compile(r"(?P<dev>\S+?)(?:\[(?P<ep>[^\]]+)\])? (?P<kind>model|KV|compute) buffer size = +(?P<mib>[\d.]+) MiB")
_LAYER = re.compile(r"layer +(?P<il>\d+) assigned to device (?P<dev>\S+?)(?:\[(?P<ep>[^\]]+)\])?,")
_MiB = 1024 * 1024


@dataclass
class DeviceLog:
    name: str
    model_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.kv_bytes + self.compute_bytes


@dataclass
class ServerLog:
    devices: dict[str, DeviceLog]  # keyed by endpoint (RPC) or device name (local GPUs)
    # device name of each layer in order, the output layer last (needs --verbosity 99);
    # every RPC device is named "RPC0" there, so this tells offloading, not which worker
    layer_devices: list[str]


def parse_server_log(text: str) -> ServerLog:
    devices: dict[str, DeviceLog] = {}
    layer_devices: list[str] = []
    for line in text.splitlines():
        m = _BUFFER.search(line)
        if m:
            key = m["ep"] or m["dev"]
            dev = devices.setdefault(key, DeviceLog(key))
            size = round(float(m["mib"]) * _MiB)
            attr = {"model": "model_bytes", "KV": "kv_bytes", "compute": "compute_bytes"}[m["kind"]]
            setattr(dev, attr, getattr(dev, attr) + size)
            continue
        m = _LAYER.search(line)
        if m:
            layer_devices.append(m["dev"])
    offloaded = {k: v for k, v in devices.items() if not k.startswith("CPU")}
    return ServerLog(offloaded, layer_devices)
