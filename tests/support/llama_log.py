"""Reading what llama-server really did from its -lv 4 log: per device the model,
KV, recurrent-state and compute buffer sizes. Every RPC device is printed as
"RPC<i>[host:port]" (i: the device's index on that server), which is also how the
planner names it; the master's own buffers ("CPU", "CPU_Mapped", ...) are summed
under "host"."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BUFFER = re.compile(r"(?P<dev>[A-Za-z_][\w]*?)(?:\[(?P<ep>[^\]]+)\])? (?P<kind>model|KV|RS|compute|LoRA) buffer size = +(?P<mib>[\d.]+) MiB")
_LAYER = re.compile(r"layer +(?P<il>\d+) assigned to device (?P<dev>\S+?)(?:\[(?P<ep>[^\]]+)\])?,")
_MiB = 1024 * 1024
_ATTR = {"model": "model_bytes", "KV": "kv_bytes", "RS": "rs_bytes", "compute": "compute_bytes", "LoRA": "lora_bytes"}


@dataclass
class DeviceLog:
    name: str
    model_bytes: int = 0
    kv_bytes: int = 0
    rs_bytes: int = 0
    compute_bytes: int = 0
    lora_bytes: int = 0  # LoRA adapters' tensors, beside the layers they patch

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.kv_bytes + self.rs_bytes + self.compute_bytes + self.lora_bytes


@dataclass
class ServerLog:
    devices: dict[str, DeviceLog]  # keyed by llama.cpp's device name: RPC0[host:port], CUDA0, ...
    # device name of each layer in order, the output layer last (needs --verbosity 99);
    # every RPC device is named "RPC0" there, so this tells offloading, not which worker
    layer_devices: list[str]
    host: DeviceLog = field(default_factory=lambda: DeviceLog("host"))  # the master's RAM


def parse_server_log(text: str) -> ServerLog:
    devices: dict[str, DeviceLog] = {}
    host = DeviceLog("host")
    layer_devices: list[str] = []
    for line in text.splitlines():
        m = _BUFFER.search(line)
        if m:
            size = round(float(m["mib"]) * _MiB)
            attr = _ATTR[m["kind"]]
            if m["dev"].startswith("CPU") and not m["ep"]:
                dev = host
            else:
                key = f"{m['dev']}[{m['ep']}]" if m["ep"] else m["dev"]
                dev = devices.setdefault(key, DeviceLog(key))
            if attr == "compute_bytes":  # reserved again (e.g. after LoRA adapters apply): the last one holds
                dev.compute_bytes = size
            else:
                setattr(dev, attr, getattr(dev, attr) + size)
            continue
        m = _LAYER.search(line)
        if m:
            layer_devices.append(m["dev"])
    return ServerLog(devices, layer_devices, host)
