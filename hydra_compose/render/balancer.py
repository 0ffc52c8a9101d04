"""Replicas behind a load balancer: HAProxy's configuration and its compose service.

Why HAProxy: a Debian package (and Ubuntu's, so every vendor's runtime image has it), streams
Server-Sent Events through untouched (no response buffering in HTTP mode), balances by least
connections (a long generation counts until it ends, unlike round robin), health-checks each
replica's /health (503 while a model loads: no traffic until it answers), and retries a request
whose replica refused it or died before answering on another one. The API key stays checked by
every replica (the balancer passes Authorization through), so the balancer holds no secret.
"""

from __future__ import annotations

from ..inventory.config import ClusterConfig, Host
from ..inventory.topology import master_bind, master_url
from ..planner.replicas import replica_port
from .common import HEADER

CONFIG_PATH = "/hydra/haproxy.cfg"


def replica_service(index: int) -> str:
    """The compose service of replica `index` (0-based): the first keeps llama-server's name."""
    return "llama-server" if index == 0 else f"llama-server-{index + 1}"


def render_haproxy(cfg: ClusterConfig, replicas: int) -> str:
    bind = master_bind(cfg)
    address = f"[{bind}]" if ":" in bind else bind
    servers = [f"    server replica{i + 1} 127.0.0.1:{replica_port(cfg, i)} check" for i in range(replicas)]
    return "\n".join([
        f"# {HEADER.format(config='cluster.yaml')}",
        f"# {replicas} llama-server replicas on this host's loopback, one address for clients.",
        "global",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout http-request 30s",
        "    # a generation streams for minutes: the idle timeouts only end a dead connection",
        "    timeout client 1h",
        "    timeout server 1h",
        "    # a replica that refused the connection, or died before answering: the same request on another",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "",
        "frontend openai",
        f"    bind {address}:{cfg.master.port}",
        "    option http-buffer-request",
        "    default_backend replicas",
        "",
        "backend replicas",
        "    balance leastconn",
        "    option httpchk",
        "    http-check send meth GET uri /health",
        "    http-check expect status 200",
        "    default-server inter 2s fall 2 rise 1",
        *servers,
        "",
    ])


def balancer_service(cfg: ClusterConfig, host: Host, image: str, build: dict) -> dict:
    return {
        "image": image, "build": build,
        "network_mode": "host",
        "restart": "unless-stopped",
        "volumes": [f"./haproxy.cfg:{CONFIG_PATH}:ro"],
        # healthy once a replica answers through it
        "healthcheck": {"test": ["CMD", "curl", "-fsS", "--", f"{master_url(cfg)}/health"],
                        "interval": "5s", "timeout": "3s", "retries": 3, "start_period": "300s"},
        "labels": {"io.hydra-compose.role": "balancer", "io.hydra-compose.host": host.name},
    }
