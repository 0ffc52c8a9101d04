"""llama-server's command line from a plan: one model's arguments, where it listens, and the
router's models preset (serve: several models), whose sections are the models' own arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import RenderError
from ..inventory.config import ClusterConfig
from ..inventory.topology import master_bind
from ..planner.plan import Plan
from ..planner.router import RouterPlan
from .common import HEADER


@dataclass(frozen=True)
class ServedModel:
    name: str  # what clients ask for (--alias)
    file: str  # below models/
    mmproj: str | None = None
    draft: str | None = None  # the speculative draft model (used when a plan speculates with one)
    lora: tuple[tuple[str, float], ...] = ()  # LoRA adapters (file below models/, scale)

    @classmethod
    def of(cls, name: str, entry) -> ServedModel:  # noqa: ANN001 - a cluster.yaml ModelEntry
        return cls(name, entry.file, entry.mmproj, entry.draft, tuple((a.file, a.scale) for a in entry.lora))


def model_args(plan: Plan, served: ServedModel, endpoints: dict[str, str] | None = None) -> list[str]:
    """What one model's llama-server needs of its plan: the files and the planned placement.
    endpoints (--rpc entry -> what to dial instead) serve other targets (a pod's network)."""
    planned = plan.llama_server_args()
    if endpoints and "--rpc" in planned:
        i = planned.index("--rpc") + 1
        planned[i] = ",".join(endpoints.get(e, e) for e in planned[i].split(","))
    args = ["-m", f"/models/{served.file}", *planned]
    if served.mmproj:
        args += ["--mmproj", f"/models/{served.mmproj}"]
    if served.lora:
        args += ["--lora-scaled", ",".join(f"/models/{f}:{s:g}" for f, s in served.lora)]
    if served.draft and plan.speculation is not None and plan.speculation.mode == "draft":
        args += ["-md", f"/models/{served.draft}"]
    return args


def listener_args(cfg: ClusterConfig, bind: str | None = None, port: int | None = None) -> list[str]:
    """Where llama-server (or the router) answers, and what it offers beside the models."""
    args = ["--host", bind or master_bind(cfg), "--port", str(port or cfg.master.port), "--metrics"]
    return args + ([] if cfg.master.ui else ["--no-ui"])


def server_args(cfg: ClusterConfig, plan: Plan, served: ServedModel, bind: str | None = None,
                endpoints: dict[str, str] | None = None, port: int | None = None) -> list[str]:
    """llama-server's arguments for one plan (the full plan, a fallback without a host, a replica)."""
    model = model_args(plan, served, endpoints)
    return [*model[:2], "--alias", served.name, *listener_args(cfg, bind, port), *model[2:]]


@dataclass(frozen=True)
class Routing:
    """The router's plan and each of its models' files, in the plan's order."""

    plan: RouterPlan
    served: tuple[ServedModel, ...]


def master_gpus(plans: list[Plan]) -> list:
    """The master's own GPUs any of these plans uses (each once): what its container is handed."""
    found = {id(d.slot.device): d.slot.device for p in plans for d in p.devices if d.slot.kind == "local"}
    return list(found.values())


PRESET_PATH = "/hydra/models.ini"  # where the master container sees the preset
# an INI value ends at ';' or '#' (a comment) and at the line's end; keys are llama-server's
# argument names without their dashes
_INI_VALUE = re.compile(r"[^;#\r\n]*[^;#\s]")


def router_args(cfg: ClusterConfig, routing: Routing, bind: str | None = None) -> list[str]:
    """The router's own command line: no model, no --rpc (it would hold the workers itself); each
    model's child gets its section of the preset."""
    return ["--models-preset", PRESET_PATH, "--models-max", str(routing.plan.models_max), *listener_args(cfg, bind)]


def render_preset(routing: Routing, endpoints: dict[str, str] | None = None) -> str:
    """--models-preset: a section per model with its plan's arguments (load-on-startup where every
    model has workers of its own, so all are loaded from the start)."""
    how = ("every model on workers of its own: all loaded together" if routing.plan.resident else
           f"the models share workers ({routing.plan.why_switching}): one loaded at a time")
    lines = [f"; {HEADER.format(config='cluster.yaml')}", f"; {how}", "version = 1", ""]
    for routed, served in zip(routing.plan.models, routing.served):
        lines.append(f"[{served.name}]")
        args = model_args(routed.plan, served, endpoints)
        for flag, value in zip(args[::2], args[1::2]):
            if not flag.startswith("-") or not _INI_VALUE.fullmatch(value):
                raise RenderError(f"model {served.name}: argument {flag} {value!r} cannot be written into the "
                                  "models preset", "remove ';', '#' and line breaks from cluster.yaml's values")
            lines.append(f"{flag.lstrip('-')} = {value}")
        if routing.plan.resident:
            lines.append("load-on-startup = true")
        lines.append("")
    return "\n".join(lines)
