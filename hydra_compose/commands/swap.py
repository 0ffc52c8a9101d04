"""swap: plan and regenerate for another model, restart only the master; workers keep running.
Behind a router (serve: several models) swap is a request: the router loads the model by name,
unloading another where they share workers; nothing is regenerated or restarted."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import httpx

from ..errors import ClusterError, ConfigError
from ..inventory.topology import master_url
from ..runtime.benchmark import auth_headers
from ..runtime.http import get, parse_json
from ..runtime.stacks import containers, server_services, stacks
from . import generate
from .context import Project
from .status import router_models

LOAD_TIMEOUT_S = 900


@dataclass(frozen=True)
class SwapResult:
    model: str
    seconds: float
    tensor_split: tuple[int, ...]
    workers_restarted: tuple[str, ...]  # host/service of workers whose container changed (should be none)


def run(project: Project, model: str, report: Callable[[str], None]) -> SwapResult:
    served = project.config.served_models
    if served and model not in served:
        raise ConfigError(f"model {model!r} is not one the router serves ({', '.join(served)})",
                          "add it to serve: in cluster.yaml and run generate")
    before = {s.host.name: containers(s) for s in stacks(project)}
    if served:
        took, split = _load_on_router(project, model, report)
    else:
        result = generate.run(project, model, None, force=False)
        master = next(s for s in stacks(project) if s.is_master)
        report(f"{master.host.name}: restarting llama-server with {result.model_name}")
        start = time.monotonic()
        # --remove-orphans: replicas the new plan no longer has (workers are in every plan's file)
        master.checked("up", "-d", "--no-deps", "--remove-orphans", "--wait", "--wait-timeout", "900",
                       *server_services(master))
        took, split, model = time.monotonic() - start, tuple(result.plan.tensor_split), result.model_name
    after = {s.host.name: containers(s) for s in stacks(project)}
    servers = set(server_services(next(s for s in stacks(project) if s.is_master)))
    restarted = [f"{h}/{svc}" for h, svcs in before.items() for svc, row in svcs.items()
                 if svc not in servers and after.get(h, {}).get(svc, {}).get("ID") != row.get("ID")]
    return SwapResult(model, round(took, 1), split, tuple(restarted))


def _load_on_router(project: Project, model: str, report: Callable[[str], None]) -> tuple[float, tuple[int, ...]]:
    from .bench import master_api_key
    from .plan import run_router

    cfg = project.config
    plan = next(m.plan for m in run_router(project).models if m.name == model)
    url = master_url(cfg)
    report(f"{url}: asking the router to load {model}")
    start = time.monotonic()
    try:
        with httpx.Client(base_url=url, headers=auth_headers(master_api_key(project))) as client:
            if _state(client, model) != "loaded":
                r = client.post("/models/load", json={"model": model}, timeout=30)
                if r.status_code != 200:
                    raise ClusterError(f"{url}/models/load answered HTTP {r.status_code}",
                                       "check `hydra-compose status` and the master's log (hydra-compose logs)")
            while (state := _state(client, model)) != "loaded":
                if time.monotonic() - start > LOAD_TIMEOUT_S or state in ("failed", "unknown"):
                    raise ClusterError(f"{model} did not load on {url} (state {state})",
                                       "see the master's log: hydra-compose logs")
                time.sleep(0.2)
    except httpx.HTTPError as exc:
        raise ClusterError(f"cannot reach the router at {url}: {type(exc).__name__}",
                           "start the cluster (hydra-compose up) or check master.host") from None
    return time.monotonic() - start, tuple(plan.tensor_split)


def _state(client: httpx.Client, model: str) -> str:
    status, body = get(client, "/models", 10)
    if status != 200:
        return "unknown"
    return dict(router_models(parse_json(body, "/models")) or ()).get(model, "unknown")
