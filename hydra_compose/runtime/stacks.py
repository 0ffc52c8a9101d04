"""Running the generated stacks on every host: up, down, status, swap, logs.

Local hosts (no `ssh:` in cluster.yaml) run `docker compose` directly; remote
ones through Docker's SSH transport (DOCKER_HOST=ssh://...). Workers start
first and the master last; down goes the other way.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from .benchmark import auth_headers, model_id
from ..inventory.config import Host
from ..errors import HydraError
from ..inventory.topology import master_url, rpc_workers

REF_LABEL = "io.hydra-compose.llama-cpp-ref"


class ClusterError(HydraError):
    """A stack could not be started, stopped or inspected."""


@dataclass(frozen=True)
class Stack:
    host: Host
    compose_file: Path
    is_master: bool

    @property
    def docker_host(self) -> str | None:
        if not self.host.ssh:
            return None
        spec = self.host.ssh
        return spec if spec.startswith("ssh://") else f"ssh://{spec}"

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


def stacks(project, hosts: list[str] | None = None) -> list[Stack]:  # noqa: ANN001
    """Stacks in start order: hosts with only workers first, the master's host last."""
    cfg = project.config
    names = {h.name for h in cfg.hosts}
    for name in hosts or []:
        if name not in names:
            raise ClusterError(f"host {name} is not in cluster.yaml", f"use one of {', '.join(sorted(names))}")
    out = []
    for h in cfg.hosts:
        if hosts and h.name not in hosts:
            continue
        f = project.root / "compose" / h.name / "docker-compose.yml"
        if not f.exists():
            raise ClusterError(f"{f} does not exist", "run `hydra-compose generate` first")
        out.append(Stack(h, f, h.name == cfg.master.host))
    return sorted(out, key=lambda s: s.is_master)


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


def _expected_ref(stack: Stack) -> str | None:
    """The llama.cpp ref the master's compose file builds llama-server from."""
    server = _compose_services(stack).get("llama-server") or {}
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


def up(project, hosts: list[str] | None, report: Callable[[str], None], build: bool = True) -> None:  # noqa: ANN001
    workers = rpc_workers(project.config)
    for stack in stacks(project, hosts):
        if stack.is_master:
            own = [w.service for w in workers if w.host == stack.host.name]
            if own:  # the master host's own workers first, so their llama.cpp can be checked too
                report(f"{stack.host.name}: starting workers")
                stack.checked("up", "-d", *(["--build"] if build else []), "--wait", "--wait-timeout", "900", *own)
            # workers on the master's own host start with it (depends_on); the others must be up already
            pending = [w for w in workers if w.host != stack.host.name and not port_open(w.address, w.port)]
            deadline = time.monotonic() + 120
            while pending and time.monotonic() < deadline:
                time.sleep(1)
                pending = [w for w in pending if not port_open(w.address, w.port)]
            if pending:
                names = ", ".join(w.endpoint for w in pending)
                raise ClusterError(f"workers {names} do not accept connections",
                                   "start their hosts first (`hydra-compose up HOST`) and check firewalls")
            check_worker_refs(project, _expected_ref(stack))
        report(f"{stack.host.name}: starting {'master and workers' if stack.is_master else 'workers'}")
        stack.checked("up", "-d", *(["--build"] if build else []), "--wait", "--wait-timeout", "900")
        report(f"{stack.host.name}: up")


def down(project, hosts: list[str] | None, report: Callable[[str], None], volumes: bool = False) -> None:  # noqa: ANN001
    for stack in reversed(stacks(project, hosts)):
        report(f"{stack.host.name}: stopping")
        stack.checked("down", *(["-v"] if volumes else []), "--timeout", "10")
        report(f"{stack.host.name}: down")


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


def _public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local)


@dataclass
class Status:
    master: dict
    workers: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"version": 1, "master": self.master, "workers": self.workers, "warnings": self.warnings}


def _compose_services(stack: Stack) -> dict:
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


def status(project, api_key: str | None) -> Status:  # noqa: ANN001
    cfg = project.config
    all_stacks = {s.host.name: s for s in stacks(project)}
    # one compose-file read and one `docker compose ps` per host, not per worker
    services = {name: _compose_services(s) for name, s in all_stacks.items()}
    running = {name: containers(s) for name, s in all_stacks.items()}
    live_refs = {name: running_refs(s, running[name]) for name, s in all_stacks.items()}
    refs: dict[str, str] = {}
    st = Status(master={})
    for w in rpc_workers(cfg):
        stack = all_stacks[w.host]
        svc = services[w.host].get(w.service, {})
        ps = running[w.host].get(w.service, {})
        ref = image_ref(stack, svc.get("image", "")) if svc else None  # what the next start runs
        live = live_refs[w.host].get(w.service)  # what runs now
        for r in (ref, live):
            if r:
                refs.setdefault(f"{w.host}/{w.service}", r)
                if r != refs[f"{w.host}/{w.service}"]:
                    refs[f"{w.host}/{w.service} (running)"] = r
        st.workers.append({"host": w.host, "service": w.service, "endpoint": w.endpoint, "bind": w.bind,
                           "state": ps.get("State", "missing"), "health": ps.get("Health") or None,
                           "reachable": port_open(w.address, w.port), "llama_cpp_ref": live or ref})
        if w.bind == "0.0.0.0" or _public(w.bind):
            st.warnings.append(f"worker {w.endpoint} listens on {w.bind}: RPC has no authentication — "
                               "bind it to a LAN address and firewall the port")
    master_stack = all_stacks[cfg.master.host]
    server = services[cfg.master.host].get("llama-server", {})
    ps = running[cfg.master.host].get("llama-server", {})
    if server:
        ref = image_ref(master_stack, server.get("image", ""))
        if ref:
            refs[f"{cfg.master.host}/llama-server"] = ref
    url = master_url(cfg)
    headers = auth_headers(api_key)
    m: dict = {"host": cfg.master.host, "port": cfg.master.port, "url": url, "state": ps.get("State", "missing"),
               "health": ps.get("Health") or None, "healthy": False, "model": None}
    command = server.get("command", [])
    command = [str(x) for x in command] if isinstance(command, list) else []
    if "--tensor-split" in command[:-1]:
        m["tensor_split"] = [int(x) if x.isdigit() else x for x in command[command.index("--tensor-split") + 1].split(",")]
    if "--rpc" in command[:-1]:
        m["rpc"] = command[command.index("--rpc") + 1].split(",")
    m.update(_master_answers(url, headers))
    if m["state"] == "running":
        # the supervisor's marker is immediate; Docker's health status follows after its retries
        marker = master_stack.compose("exec", "-T", "llama-server", "test", "-e", "/tmp/hydra-stalled", timeout=30)
        m["stalled"] = marker.returncode == 0
    if m["healthy"] and (m["health"] == "unhealthy" or m.get("stalled")):
        m["healthy"] = False
        st.warnings.append("llama-server answers /health but generation is stalled: a worker is frozen or "
                           "unreachable (docker unpause it, or restart it — the master follows)")
    if not m["healthy"]:
        st.warnings.append(f"master {url} is not healthy (state {m['state']})")
    if len(set(refs.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(refs.items()))
        st.warnings.append(f"llama.cpp version skew across images ({detail}): rebuild every host from the same ref")
    for w in st.workers:
        if not w["reachable"]:
            st.warnings.append(f"worker {w['endpoint']} on {w['host']} does not accept connections")
    st.master = m
    return st


def _master_answers(url: str, headers: dict) -> dict:
    """Health, model, slots and speed as the master reports them; whatever it answers, never a crash."""
    out: dict = {"healthy": False}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=3) as client:
            out["healthy"] = client.get("/health").status_code == 200
            if not out["healthy"]:
                return out
            try:
                out["model"] = model_id(client.get("/v1/models").json())
            except ValueError:
                out["model"] = None
            try:
                slots = client.get("/slots", timeout=4).json()
                if isinstance(slots, list):
                    out["slots"] = len(slots)
                    out["slots_processing"] = sum(1 for x in slots if isinstance(x, dict) and x.get("is_processing"))
            except ValueError:
                out["slots"] = None
            metrics = client.get("/metrics", timeout=4)
            hit = re.search(r"^llamacpp:predicted_tokens_seconds ([0-9.eE+-]+)$", metrics.text, re.M)
            if hit:
                try:
                    out["predicted_tokens_per_s"] = round(float(hit[1]), 2)
                except ValueError:
                    pass
    except httpx.HTTPError:
        pass
    return out


def swap(project, model: str, report: Callable[[str], None]) -> dict:  # noqa: ANN001
    """Regenerate for another model and restart only the master; workers keep running."""
    from ..commands import generate

    before = {s.host.name: containers(s) for s in stacks(project)}
    result = generate.run(project, model, None, force=False)
    master = next(s for s in stacks(project) if s.is_master)
    report(f"{master.host.name}: restarting llama-server with {result.model_name}")
    start = time.monotonic()
    master.checked("up", "-d", "--no-deps", "--wait", "--wait-timeout", "900", "llama-server")
    took = time.monotonic() - start
    after = {s.host.name: containers(s) for s in stacks(project)}
    restarted = [f"{h}/{svc}" for h, svcs in before.items() for svc, row in svcs.items()
                 if svc != "llama-server" and after.get(h, {}).get(svc, {}).get("ID") != row.get("ID")]
    return {"model": result.model_name, "seconds": round(took, 1), "tensor_split": result.plan.tensor_split,
            "workers_restarted": restarted}


def logs(project, host: str | None, service: str | None, follow: bool) -> int:  # noqa: ANN001
    chosen = stacks(project, [host] if host else None)
    if len(chosen) > 1 and follow:
        chosen = [s for s in chosen if s.is_master] or chosen[:1]
    rc = 0
    for stack in chosen:
        r = stack.compose("logs", *(["-f"] if follow else []), *([service] if service else []),
                          capture=False, timeout=None)
        rc = rc or r.returncode
    return rc
