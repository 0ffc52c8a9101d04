"""Who runs what: the RPC workers of every host and the master's local GPUs.

Derived from cluster.yaml alone; generate, plan and the lifecycle commands all
read the cluster through these functions, so they always agree.

A worker is one ggml-rpc-server. By default each device gets its own; a host
with `rpc_server: per-host` serves all its GPUs of one vendor from a single
server (`-d CUDA0,CUDA1`), so copies between them stay on that host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import vendors
from .config import DEFAULT_RPC_PORT, ClusterConfig, Device, Host
from ..errors import ConfigError


TUNNEL_NET = "127.0.1"  # the master's local TLS tunnel to its k-th remote host listens on 127.0.1.k


@dataclass(frozen=True)
class Worker:
    host: str
    address: str  # what the master dials (with rpc_tls: its local tunnel, or loopback on its own host)
    bind: str  # what ggml-rpc-server listens on
    port: int
    devices: tuple[Device, ...]  # served by this one ggml-rpc-server, in -d order
    ordinal: int  # position among this host's workers
    tls_address: str | None = None  # rpc_tls: the host's address, where its TLS terminator listens
    tls_bind: str | None = None  # ...and what that terminator binds
    local_port: int | None = None  # where the worker listens behind its terminator, when not port (a pod)

    @property
    def reach(self) -> str:
        """Where the worker host accepts connections from the network (TLS or plain)."""
        return f"{self.tls_address or self.address}:{self.port}"

    @property
    def device(self) -> Device:
        return self.devices[0]

    @property
    def vendor(self) -> str:
        return self.device.vendor

    @property
    def service(self) -> str:
        if len(self.devices) > 1:
            return f"rpc-{self.vendor}"
        suffix = self.device.index if self.device.index is not None and self.device.is_gpu else self.ordinal
        return f"rpc-{self.vendor}{suffix}"

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def backend_devices(self) -> list[str] | None:
        """ggml device names for -d, as the container sees its GPUs (renumbered from 0)."""
        if len(self.devices) == 1:
            return None
        return [f"{self.device.record.backend}{i}" for i in range(len(self.devices))]


def master_vendor(cfg: ClusterConfig) -> str:
    """The GPU vendor of llama-server's image: that of the master host's first GPU, else cpu."""
    gpus = [d for d in cfg.master_host.devices if d.is_gpu]
    return gpus[0].vendor if gpus else vendors.CPU.name


def master_bind(cfg: ClusterConfig) -> str:
    """What llama-server listens on: master.bind, else the master host's address."""
    return cfg.master.bind or cfg.master_host.address


def master_url(cfg: ClusterConfig) -> str:
    """Where the master answers; a wildcard bind is reached on loopback. On Kubernetes: its Service
    (kubernetes.api_url, else the master node's address, where a LoadBalancer/NodePort answers)."""
    if cfg.cluster.target == "kubernetes":
        return (cfg.kubernetes.api_url or f"http://{cfg.master_host.address}:{cfg.master.port}").rstrip("/")
    bind = master_bind(cfg)
    return f"http://{'127.0.0.1' if bind == '0.0.0.0' else bind}:{cfg.master.port}"


def local_gpus(cfg: ClusterConfig) -> list[Device]:
    vendor = master_vendor(cfg)
    return [d for d in cfg.master_host.devices if d.is_gpu and d.vendor == vendor]


def _served_groups(host: Host, skip: set[int]) -> list[tuple[int, tuple[Device, ...]]]:
    """(first device index in the host's list, devices) per ggml-rpc-server of the host."""
    remaining = [(i, d) for i, d in enumerate(host.devices) if id(d) not in skip]
    if host.rpc_server == "per-device":
        return [(i, (d,)) for i, d in remaining]
    groups: dict[str, list[tuple[int, Device]]] = {}
    singles = []
    for i, d in remaining:
        if d.is_gpu:
            groups.setdefault(d.vendor, []).append((i, d))
        else:
            singles.append((i, (d,)))  # a CPU device keeps its own server (its own thread count)
    grouped = [(members[0][0], tuple(d for _, d in members)) for members in groups.values()]
    return sorted(grouped + singles, key=lambda g: g[0])


def loopback(address: str) -> bool:
    """An address only this machine reaches (127.0.0.0/8)."""
    return address.startswith("127.")


def rpc_tls(cfg: ClusterConfig) -> bool:
    """Whether the RPC links to other Docker hosts are TLS tunnels (cluster.rpc_tls; unset: when a
    worker host is reachable from outside this machine)."""
    if cfg.cluster.rpc_tls is not None:
        return cfg.cluster.rpc_tls
    return any(not loopback(h.address) for h in tls_hosts(cfg))


def tls_hosts(cfg: ClusterConfig) -> list[Host]:
    """Hosts whose workers the master reaches through a TLS tunnel once rpc_tls is on: Docker hosts
    with workers, other than the master's (native hosts keep plain RPC: no terminator there)."""
    local = {id(d) for d in local_gpus(cfg)}
    return [h for h in cfg.hosts if h.name != cfg.master.host and h.runtime == "docker"
            and any(id(d) not in local for d in h.devices)]


def rpc_workers(cfg: ClusterConfig) -> list[Worker]:
    local = {id(d) for d in local_gpus(cfg)}
    tls = rpc_tls(cfg)
    tunnels = {h.name: f"{TUNNEL_NET}.{k}" for k, h in enumerate(tls_hosts(cfg), 1)} if tls else {}
    if len(tunnels) > 254:
        raise ConfigError("rpc_tls: more than 254 worker hosts", "set cluster.rpc_tls: false")
    workers = []
    for host in cfg.hosts:
        used: dict[int, int] = {}
        ordinal = 0
        next_port = DEFAULT_RPC_PORT
        groups = _served_groups(host, local)
        for i, devices in groups:
            ports = {d.rpc_port for d in devices if d.rpc_port is not None}
            if len(ports) > 1:
                raise ConfigError(f"hosts[{cfg.hosts.index(host)}]: the {devices[0].vendor} GPUs of {host.name} share "
                                  f"one ggml-rpc-server (rpc_server: per-host) but name ports {sorted(ports)}",
                                  "give rpc_port on one of them only, or set rpc_server: per-device")
            port = ports.pop() if ports else None
            if port is None:
                taken = {d.rpc_port for d in host.devices}
                while next_port in used or next_port in taken:
                    next_port += 1
                port = next_port
            if port in used:
                raise ConfigError(f"hosts[{cfg.hosts.index(host)}].devices[{i}]: rpc_port {port} on {host.name} "
                                  f"is already used by devices[{used[port]}]", "give each worker its own rpc_port")
            if host.name == cfg.master.host and port == cfg.master.port:
                raise ConfigError(f"rpc_port {port} on {host.name} collides with master.port",
                                  "choose another rpc_port or master.port")
            used[port] = i
            address, bind, tls_address, tls_bind = host.address, host.bind or host.address, None, None
            if host.name in tunnels:  # ggml-rpc-server on loopback, stunnel on the host's address
                if host.address == "127.0.0.1" or host.bind == "127.0.0.1":
                    raise ConfigError(f"rpc_tls: {host.name} has address 127.0.0.1, where its worker listens "
                                      "behind the TLS terminator", "give the host its LAN address (or another "
                                      "127.x address for a test), or set cluster.rpc_tls: false")
                address, bind, tls_address, tls_bind = tunnels[host.name], "127.0.0.1", host.address, bind
            elif tls and host.name == cfg.master.host and host.runtime == "docker":
                address = bind = "127.0.0.1"  # the master's own workers: loopback only, no tunnel needed
            workers.append(Worker(host=host.name, address=address, bind=bind, port=port, devices=devices,
                                  ordinal=ordinal, tls_address=tls_address, tls_bind=tls_bind))
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


def with_devices(cfg: ClusterConfig, keep: Callable[[Device], bool]) -> ClusterConfig:
    """The cluster with only the devices keep() accepts (for fallback and router plans). Hosts stay,
    even without devices, and every remaining worker keeps its port: default ports are handed out in
    order, so removing a device would move the later ones. Workers' addresses may still differ (TLS
    tunnels are numbered over the hosts with workers): planner.subset names them as the whole cluster does."""
    port_of = {id(d): w.port for w in rpc_workers(cfg) for d in w.devices}
    hosts = []
    for h in cfg.hosts:
        devices = [d.model_copy(update={"rpc_port": port_of[id(d)]}) if id(d) in port_of else d
                   for d in h.devices if keep(d)]
        hosts.append(h.model_copy(update={"devices": devices}))
    return cfg.model_copy(update={"hosts": hosts})
