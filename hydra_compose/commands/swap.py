"""swap: plan and regenerate for another model, restart only the master; workers keep running."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ..runtime.stacks import containers, stacks
from . import generate
from .context import Project


@dataclass(frozen=True)
class SwapResult:
    model: str
    seconds: float
    tensor_split: tuple[int, ...]
    workers_restarted: tuple[str, ...]  # host/service of workers whose container changed (should be none)


def run(project: Project, model: str, report: Callable[[str], None]) -> SwapResult:
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
    return SwapResult(result.model_name, round(took, 1), tuple(result.plan.tensor_split), tuple(restarted))
