"""Who runs what: the RPC workers of every host and the master's local GPUs.

Derived from cluster.yaml alone; generate, plan and the lifecycle commands all
read the cluster through these two functions, so they always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import DEFAULT_RPC_PORT, ClusterConfig, Device
from .errors import ConfigError


@dataclass(frozen=True)
class Worker:
    host: str
    address: str  # what the master dials
    bind: str  # what ggml-rpc-server listens on
    port: int
    device: Device
    ordinal: int  # position among this host's workers

    @property
    def service(self) -> str:
        vendor = self.device.vendor
        suffix = f"{vendor}{self.device.index}" if self.device.index is not None and vendor != "cpu" else f"{vendor}{self.ordinal}"
        return f"rpc-{suffix}"

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def device_label(self) -> str:
        """Which of a worker's devices this is, when one ggml-rpc-server serves several."""
        return ""


def master_vendor(cfg: ClusterConfig) -> str:
    """The GPU vendor of llama-server's image: that of the master host's first GPU, else cpu."""
    gpus = [d for d in cfg.master_host.devices if d.is_gpu]
    return gpus[0].vendor if gpus else "cpu"


def master_bind(cfg: ClusterConfig) -> str:
    """What llama-server listens on: master.bind, else the master host's address."""
    return cfg.master.bind or cfg.master_host.address


def master_url(cfg: ClusterConfig) -> str:
    """Where the master answers; a wildcard bind is reached on loopback."""
    bind = master_bind(cfg)
    return f"http://{'127.0.0.1' if bind == '0.0.0.0' else bind}:{cfg.master.port}"


def local_gpus(cfg: ClusterConfig) -> list[Device]:
    vendor = master_vendor(cfg)
    return [d for d in cfg.master_host.devices if d.is_gpu and d.vendor == vendor]


def rpc_workers(cfg: ClusterConfig) -> list[Worker]:
    local = {id(d) for d in local_gpus(cfg)}
    workers = []
    for host in cfg.hosts:
        used: dict[int, int] = {}
        ordinal = 0
        next_port = DEFAULT_RPC_PORT
        for i, dev in enumerate(host.devices):
            if id(dev) in local:
                continue
            port = dev.rpc_port
            if port is None:
                while next_port in used or next_port in {d.rpc_port for d in host.devices}:
                    next_port += 1
                port = next_port
            if port in used:
                raise ConfigError(f"hosts[{cfg.hosts.index(host)}].devices[{i}]: rpc_port {port} on {host.name} "
                                  f"is already used by devices[{used[port]}]", "give each worker its own rpc_port")
            if host.name == cfg.master.host and port == cfg.master.port:
                raise ConfigError(f"rpc_port {port} on {host.name} collides with master.port",
                                  "choose another rpc_port or master.port")
            used[port] = i
            workers.append(Worker(host=host.name, address=host.address, bind=host.bind or host.address,
                                  port=port, device=dev, ordinal=ordinal))
            ordinal += 1
    services: dict[tuple[str, str], Worker] = {}
    for w in workers:
        other = services.get((w.host, w.service))
        if other is not None:  # one would silently replace the other in the compose file
            raise ConfigError(f"two devices on {w.host} would both be served as {w.service} "
                              f"(ports {other.port} and {w.port})",
                              "give every GPU its index: (inspect --write fills them in)")
        services[(w.host, w.service)] = w
    seen: dict[str, str] = {}
    for w in workers:
        if w.endpoint in seen and seen[w.endpoint] != w.host:
            raise ConfigError(f"{w.endpoint} is used by hosts {seen[w.endpoint]} and {w.host}",
                              "give each host its own address")
        seen[w.endpoint] = w.host
    return workers
