"""status: every worker (container, port, llama.cpp ref) and the master (health, model,
slots, tok/s, stall), with warnings. Reads each host's compose file and runs compose ps
once per host; never prints or returns the API key."""

from __future__ import annotations

import ipaddress
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import httpx

from ..inventory.topology import master_url, rpc_workers
from ..errors import BenchError
from ..runtime.benchmark import auth_headers, model_id
from ..runtime.http import MAX_METRICS, get, parse_json
from ..vendors.base import number
from ..runtime.device_usage import DeviceStatus, device_rows
from ..runtime.rpc_hello import hello
from ..runtime.stacks import compose_services, containers, image_ref, running_refs, stacks
from .context import Project


@dataclass(frozen=True)
class WorkerStatus:
    host: str
    service: str
    endpoint: str
    bind: str
    state: str  # compose's State, or "missing"
    health: str | None
    reachable: bool
    llama_cpp_ref: str | None
    protocol: str | None = None  # the RPC protocol it answered HELLO with, "busy" while it serves the master


@dataclass(frozen=True)
class MasterStatus:
    host: str
    port: int
    url: str
    state: str
    health: str | None
    healthy: bool
    model: str | None = None
    tensor_split: tuple[int | str, ...] | None = None
    rpc: tuple[str, ...] | None = None
    slots: int | None = None
    slots_processing: int | None = None
    predicted_tokens_per_s: float | None = None
    stalled: bool | None = None
    mode: str | None = None  # the supervisor's: "full", "degraded: without HOST (...)" or "down: why"
    models: tuple[tuple[str, str], ...] | None = None  # router: (name, loaded|unloaded|loading|...) per model


@dataclass(frozen=True)
class StatusResult:
    master: MasterStatus
    workers: tuple[WorkerStatus, ...]
    warnings: tuple[str, ...]
    devices: tuple[DeviceStatus, ...] = ()  # planned vs used memory, load, power, temperature

    def to_json(self) -> dict:
        return {"version": 1, "master": asdict(self.master), "workers": [asdict(w) for w in self.workers],
                "devices": [asdict(d) for d in self.devices], "warnings": list(self.warnings)}


def _public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local)


def _worker_rows(project: Project, all_stacks: dict, services: dict, running: dict,
                 refs: dict[str, str], warnings: list[str]) -> list[WorkerStatus]:
    live_refs = {name: running_refs(s, running[name]) for name, s in all_stacks.items()}
    rows = []
    workers = rpc_workers(project.config)
    with ThreadPoolExecutor(max(1, min(16, len(workers)))) as pool:  # a busy worker costs its timeout: ask all at once
        hellos = list(pool.map(lambda w: hello(w.address, w.port, timeout_s=1.0), workers))
    for w, hi in zip(workers, hellos):
        if w.host not in all_stacks:  # a native worker: no container, its HELLO tells
            rows.append(WorkerStatus(w.host, w.service, w.reach, w.bind, "native", None, hi.state != "refused",
                                     None, None if hi.state == "refused" else hi.text))
            continue
        svc = services[w.host].get(w.service, {})
        ps = running[w.host].get(w.service, {})
        ref = image_ref(all_stacks[w.host], svc.get("image", "")) if svc else None  # what the next start runs
        live = live_refs[w.host].get(w.service)  # what runs now
        for r in (ref, live):
            if r:
                refs.setdefault(f"{w.host}/{w.service}", r)
                if r != refs[f"{w.host}/{w.service}"]:
                    refs[f"{w.host}/{w.service} (running)"] = r
        rows.append(WorkerStatus(w.host, w.service, w.reach, w.bind, ps.get("State", "missing"),
                                 ps.get("Health") or None, hi.state != "refused", live or ref,
                                 None if hi.state == "refused" else hi.text))
        if w.bind == "0.0.0.0" or _public(w.bind):
            warnings.append(f"worker {w.endpoint} listens on {w.bind}: RPC has no authentication — "
                            "bind it to a LAN address and firewall the port")
    return rows


def run(project: Project, api_key: str | None) -> StatusResult:
    cfg = project.config
    if cfg.cluster.target == "kubernetes":
        return _pods(project, api_key)
    all_stacks = {s.host.name: s for s in stacks(project)}
    # one compose-file read and one `docker compose ps` per host, not per worker
    services = {name: compose_services(s) for name, s in all_stacks.items()}
    running = {name: containers(s) for name, s in all_stacks.items()}
    refs: dict[str, str] = {}
    warnings: list[str] = []
    workers = _worker_rows(project, all_stacks, services, running, refs, warnings)
    master_stack = all_stacks[cfg.master.host]
    server = services[cfg.master.host].get("llama-server", {})
    ps = running[cfg.master.host].get("llama-server", {})
    if server:
        ref = image_ref(master_stack, server.get("image", ""))
        if ref:
            refs[f"{cfg.master.host}/llama-server"] = ref
    url = master_url(cfg)
    command = server.get("command", [])
    command = [str(x) for x in command] if isinstance(command, list) else []
    fields: dict = {}
    if "--tensor-split" in command[:-1]:
        fields["tensor_split"] = tuple(int(x) if x.isdigit() else x
                                       for x in command[command.index("--tensor-split") + 1].split(","))
    if "--rpc" in command[:-1]:
        fields["rpc"] = tuple(command[command.index("--rpc") + 1].split(","))
    fields.update(master_answers(url, auth_headers(api_key)))
    state = ps.get("State", "missing")
    if state == "running":
        # the supervisor's markers are immediate; Docker's health status follows after its retries
        marker = master_stack.compose("exec", "-T", "llama-server", "bash", "-c",
                                      "test -e /tmp/hydra-stalled && echo stalled; head -c 2000 /tmp/hydra-mode",
                                      timeout=30)
        lines = marker.stdout.splitlines() if isinstance(marker.stdout, str) else []
        fields["stalled"] = bool(lines) and lines[0] == "stalled"
        mode = lines[-1].strip() if lines and lines[-1] != "stalled" else None
        fields["mode"] = "".join(c for c in mode if c.isprintable())[:500] if mode else None
        if fields["mode"] and fields["mode"] != "full":
            warnings.append(f"master {fields['mode']}")
    health = ps.get("Health") or None
    if fields.get("healthy") and (health == "unhealthy" or fields.get("stalled")):
        fields["healthy"] = False
        warnings.append("llama-server answers /health but generation is stalled: a worker is frozen or "
                        "unreachable (docker unpause it, or restart it — the master follows)")
    if not fields.get("healthy"):
        warnings.append(f"master {url} is not healthy (state {state})")
    if len(set(refs.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(refs.items()))
        warnings.append(f"llama.cpp version skew across images ({detail}): rebuild every host from the same ref")
    for w in workers:
        if not w.reachable:
            warnings.append(f"worker {w.endpoint} on {w.host} does not accept connections")
    protocols = {w.protocol for w in workers if w.protocol and w.protocol[0].isdigit()}
    if len(protocols) > 1:
        warnings.append(f"workers speak different RPC protocols ({', '.join(sorted(protocols))}): install one "
                        "llama.cpp ref everywhere")
    master = MasterStatus(host=cfg.master.host, port=cfg.master.port, url=url, state=state, health=health,
                          **{"healthy": False, **fields})
    plan = running_plan(project, command, fields.get("mode"), warnings, fields.get("models"))
    devices, over = device_rows(cfg, plan, all_stacks, running)
    return StatusResult(master, tuple(workers), tuple(warnings + over), tuple(devices))


def running_plan(project: Project, command: list[str], mode: str | None, warnings: list[str],
                 models: tuple[tuple[str, str], ...] | None = None):  # noqa: ANN201
    """The plan llama-server runs, recomputed from cluster.yaml and the model's header, when its
    arguments are exactly what the compose file says (else None: a fallback serves, or generate ran
    with other options than cluster.yaml's). Replicas: each replica's plan; a router: its loaded models'."""
    from ..errors import HydraError
    from ..planner.plan import PlanOptions, make_plan
    from ..render.compose import ServedModel, server_args

    if "--models-preset" in command:
        return _router_plan(project, command, models or (), warnings)
    if "--alias" not in command[:-1] or (mode and mode != "full"):
        return None
    try:
        name, entry = project.model_entry(command[command.index("--alias") + 1])
        opts = PlanOptions.from_entry(entry)
        extras = (project.projector_facts(entry), project.draft_facts(entry))
        written = [a.replace("$$", "$") for a in command]  # compose's escaping of '$'
        if entry.replicas != 1:  # the first replica's command; the devices of every replica
            from ..planner.replicas import replica_port, replicas_of

            replicas = list(replicas_of(project.config, entry, project.model_facts(entry), opts, *extras).plans)
            first = server_args(project.config, replicas[0], ServedModel.of(name, entry),
                                *(("127.0.0.1", None, replica_port(project.config, 0)) if len(replicas) > 1 else ()))
            if first == written:
                return replicas
        else:
            plan = make_plan(project.config, project.model_facts(entry), opts, *extras)
            if server_args(project.config, plan, ServedModel.of(name, entry)) == written:
                return plan
    except HydraError:
        pass
    warnings.append(STALE_PLAN)
    return None


STALE_PLAN = ("planned MiB per device not shown: the master runs other arguments than cluster.yaml's plan "
              "(generate with options, or an edited cluster.yaml): run generate again")


def _router_plan(project: Project, command: list[str], models: tuple[tuple[str, str], ...],
                 warnings: list[str]):  # noqa: ANN202
    from ..errors import HydraError
    from ..render.server_args import Routing, ServedModel, router_args
    from .plan import run_router

    cfg = project.config
    try:
        names = cfg.served_models
        router = run_router(project)
        routing = Routing(router, tuple(ServedModel.of(n, cfg.models[n]) for n in names))
        if router_args(cfg, routing) != command:
            warnings.append(STALE_PLAN)
            return None
    except HydraError:
        warnings.append(STALE_PLAN)
        return None
    loaded = {name for name, state in models if state == "loaded"}
    return [m.plan for m in router.models if m.name in loaded]


def router_models(payload: object) -> tuple[tuple[str, str], ...] | None:
    """A router's /models: (id, status) of each model (None from a plain llama-server, which has no status)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return None
    out = []
    for m in data[:64]:
        state = m.get("status") if isinstance(m, dict) else None
        if not isinstance(state, dict) or not isinstance(m.get("id"), str) or not isinstance(state.get("value"), str):
            return None
        out.append((m["id"][:100], state["value"][:20]))
    return tuple(out) or None


def _pods(project: Project, api_key: str | None) -> StatusResult:
    """On Kubernetes: the master as its Service answers (the pods themselves are kubectl's to show);
    workers as planned, reachable only from inside the cluster."""
    from ..render.kubernetes import k8s_workers, namespace, service_dns

    cfg = project.config
    url = master_url(cfg)
    fields = master_answers(url, auth_headers(api_key))
    warnings = [] if fields.get("healthy") else [
        f"master {url} is not healthy: see kubectl -n {namespace(cfg)} get pods, and describe the one not Ready"]
    workers = tuple(WorkerStatus(w.host, w.service, f"{service_dns(cfg, w)}:{w.port}", "pod", "kubernetes", None,
                                 bool(fields.get("healthy")), None) for w in k8s_workers(cfg))
    master = MasterStatus(host=cfg.master.host, port=cfg.master.port, url=url, state="kubernetes", health=None,
                          **{"healthy": False, **fields})
    return StatusResult(master, workers, tuple(warnings))


def master_answers(url: str, headers: dict) -> dict:
    """Health, model, slots and speed as the master reports them; whatever it answers (slowly,
    hugely, garbled), never a crash: every request is bounded in time and size."""
    out: dict = {"healthy": False}
    try:
        with httpx.Client(base_url=url, headers=headers) as client:
            status, _ = get(client, "/health", 3, 64 * 1024)
            out["healthy"] = status == 200
            if not out["healthy"]:
                return out
            out["model"] = _json_or_none(client, "/v1/models", model_id)
            out["models"] = _json_or_none(client, "/models", router_models)
            slots = _json_or_none(client, "/slots", lambda x: x if isinstance(x, list) else None)
            if slots is not None:
                out["slots"] = len(slots)
                out["slots_processing"] = sum(1 for x in slots if isinstance(x, dict) and x.get("is_processing") is True)
            status, metrics = get(client, "/metrics", 4, MAX_METRICS)
            hit = re.search(rb"^llamacpp:predicted_tokens_seconds ([0-9.eE+-]{1,30})$", metrics, re.M)
            if status == 200 and hit:
                value = number(hit[1].decode())
                if value is not None and 0 <= value < 1e9:
                    out["predicted_tokens_per_s"] = round(value, 2)
    except (httpx.HTTPError, BenchError):
        pass
    return out


def _json_or_none(client: httpx.Client, path: str, pick):  # noqa: ANN001, ANN202
    status, body = get(client, path, 4)
    if status != 200:
        return None
    try:
        return pick(parse_json(body, path))
    except BenchError:
        return None
