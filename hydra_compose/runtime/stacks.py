"""The generated stacks as Docker sees them: one compose project per host.

Local hosts (no `ssh:` in cluster.yaml) run `docker compose` directly; remote
ones through Docker's SSH transport (DOCKER_HOST=ssh://...). The commands up,
down, status, swap and logs (commands/*.py) drive the cluster through this.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterError
from ..inventory.config import Host
from .ssh import docker_host

REF_LABEL = "io.hydra-compose.llama-cpp-ref"


@dataclass(frozen=True)
class Stack:
    host: Host
    compose_file: Path
    is_master: bool

    @property
    def docker_host(self) -> str | None:
        return docker_host(self.host.ssh)

    @property
    def env(self) -> dict[str, str]:
        """The environment docker runs with for this host (remote hosts over Docker's SSH transport)."""
        return dict(os.environ, **({"DOCKER_HOST": self.docker_host} if self.docker_host else {}))

    def compose(self, *args: str, capture: bool = True, timeout: float | None = 1800) -> subprocess.CompletedProcess:
        env = self.env
        argv = ["docker", "compose", "-f", str(self.compose_file), *args]
        try:
            return subprocess.run(argv, capture_output=capture, text=True, env=env, timeout=timeout)
        except FileNotFoundError:
            raise ClusterError("docker is not installed here", "install Docker with the compose plugin") from None
        except subprocess.TimeoutExpired:
            raise ClusterError(f"docker compose {args[0]} on {self.host.name} took too long",
                               "look at `hydra-compose logs " + self.host.name + "`") from None

    def checked(self, *args: str) -> str:
        r = self.compose(*args)
        if r.returncode != 0:
            lines = (r.stderr or r.stdout).strip().splitlines()
            raise ClusterError(f"docker compose {args[0]} on {self.host.name} failed: {lines[-1] if lines else r.returncode}",
                               f"see `hydra-compose logs {self.host.name}`")
        return r.stdout


def stacks(project, hosts: list[str] | None = None, act: bool = False) -> list[Stack]:  # noqa: ANN001
    """The Docker hosts' stacks in start order: hosts with only workers first, the master's host last.
    act: the caller changes them, so a host must be this machine or reachable through ssh:."""
    cfg = project.config
    if cfg.cluster.target == "kubernetes":
        raise ClusterError("cluster.target is kubernetes: its pods are Kubernetes', not docker compose's",
                           "use kubectl (apply -k k8s/, -n NAMESPACE get pods / logs / rollout restart "
                           "deployment/llama-server); status and bench work against the Service")
    names = {h.name for h in cfg.hosts}
    for name in hosts or []:
        if name not in names:
            raise ClusterError(f"host {name} is not in cluster.yaml", f"use one of {', '.join(sorted(names))}")
    out = []
    for h in cfg.hosts:
        if (hosts and h.name not in hosts) or h.runtime != "docker":
            continue  # native hosts run their workers as services (native/<host>/install.*)
        if act and not h.ssh and not is_this_machine(h.address):
            raise ClusterError(f"{h.name} ({h.address}) is not this machine and has no ssh: entry, so its stack "
                               "would start on this machine's Docker instead",
                               f"add ssh: user@{h.address} to it in cluster.yaml, or run `hydra-compose up "
                               f"{h.name}` on {h.name} itself (and name the other hosts here)")
        f = project.root / "compose" / h.name / "docker-compose.yml"
        if not f.exists():
            raise ClusterError(f"{f} does not exist", "run `hydra-compose generate` first")
        out.append(Stack(h, f, h.name == cfg.master.host))
    return sorted(out, key=lambda s: s.is_master)


def is_this_machine(address: str) -> bool:
    """Whether an address (or what a name resolves to) belongs to this machine: only a local
    address can be bound."""
    try:
        infos = socket.getaddrinfo(address, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return False
    for info in infos:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((info[4][0], 0))
                return True
            except OSError:
                continue
    return False


def port_open(address: str, port: int, timeout: float = 1.0) -> bool:
    """True unless the connection is refused or unroutable. A timeout counts as open:
    a worker serving the master accepts nobody else, and its full accept queue
    makes connects hang rather than fail."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except socket.timeout:
        return True
    except OSError:
        return False


def expected_ref(stack: Stack) -> str | None:
    """The llama.cpp ref the master's compose file builds llama-server from."""
    server = compose_services(stack).get("llama-server") or {}
    ref = ((server.get("build") or {}).get("args") or {}).get("LLAMA_CPP_REF")
    return str(ref) if ref is not None else None


def running_refs(stack: Stack, rows: dict[str, dict] | None = None) -> dict[str, str | None]:
    """Service -> llama.cpp ref label of the container that runs now (image labels carry over)."""
    rows = containers(stack) if rows is None else rows
    ids = {svc: row.get("ID") for svc, row in rows.items() if row.get("ID")}
    if not ids:
        return {}
    fmt = '{{index .Config.Labels "' + REF_LABEL + '"}}'
    r = subprocess.run(["docker", "inspect", "-f", fmt, *ids.values()], capture_output=True, text=True,
                       env=stack.env)
    if r.returncode != 0:
        return {}
    values = r.stdout.splitlines()
    return {svc: (v.strip() if v.strip() and v.strip() != "<no value>" else None) for svc, v in zip(ids, values)}


def check_worker_refs(project, expected: str | None) -> None:  # noqa: ANN001
    """Refuse a master whose workers run another llama.cpp: RPC protocols differ between
    releases, and a mismatch crashes the master or corrupts results."""
    if expected is None:
        return
    for stack in stacks(project):
        for service, ref in running_refs(stack).items():
            if service != "llama-server" and ref is not None and ref != expected:
                raise ClusterError(f"worker {service} on {stack.host.name} runs llama.cpp {ref}, the master is "
                                   f"built from {expected}: their RPC protocols may differ",
                                   f"copy the generated files to {stack.host.name} and run `hydra-compose up "
                                   f"{stack.host.name}` (it rebuilds from {expected})")


def containers(stack: Stack) -> dict[str, dict]:
    """Service -> compose ps entry (State, Health, ID, ...)."""
    r = stack.compose("ps", "-a", "--format", "json")
    if r.returncode != 0:
        return {}
    text = r.stdout.strip()
    try:
        rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
        return {row["Service"]: row for row in rows if isinstance(row, dict) and isinstance(row.get("Service"), str)}
    except (ValueError, TypeError):
        raise ClusterError(f"docker compose ps on {stack.host.name} printed something unexpected",
                           "check the docker and compose versions (docker compose version)") from None


def image_ref(stack: Stack, image: str) -> str | None:
    r = subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image],
                       capture_output=True, text=True, env=stack.env)
    if r.returncode != 0:
        return None
    try:
        labels = json.loads(r.stdout.strip() or "null") or {}
    except ValueError:
        return None
    ref = labels.get(REF_LABEL) if isinstance(labels, dict) else None
    return ref if isinstance(ref, str) else None


def compose_services(stack: Stack) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(stack.compose_file.read_text())
        services = doc.get("services") if isinstance(doc, dict) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        services = None
    if not isinstance(services, dict) or not all(isinstance(v, dict) for v in services.values()):
        raise ClusterError(f"{stack.compose_file} is not a compose file hydra-compose wrote",
                           "run `hydra-compose generate` (with --force if you edited it)")
    return services


def server_services(stack: Stack) -> list[str]:
    """The master stack's llama-servers (one, or each replica) and the balancer in front of them:
    what a change of keys or model restarts, what calibrate stops while it borrows the workers."""
    services = compose_services(stack)
    out = [n for n, svc in services.items()
           if ((svc.get("labels") or {}).get("io.hydra-compose.role") in ("master", "balancer"))]
    return out or ["llama-server"]
