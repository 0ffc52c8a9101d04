"""inspect: find each target's GPUs, RAM, Docker and GIDs; --write merges them into cluster.yaml."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError, UsageError
from ..inventory.config import parse_config
from ..inventory.discovery import HostReport, InspectTarget, merge
from ..runtime.probe import inspect

@dataclass(frozen=True)
class InspectResult:
    reports: tuple[HostReport, ...]
    errors: tuple[str, ...]
    diff: str | None  # --write: what changed in cluster.yaml


def targets_for(args: list[str], config_path: Path) -> list[InspectTarget]:
    if not args:
        return [InspectTarget("local", None)]
    hosts = {}
    if config_path.exists():
        raw = yaml.safe_load(config_path.read_text()) or {}
        hosts = {h.get("name"): h for h in raw.get("hosts") or [] if isinstance(h, dict)}
    out = []
    for a in args:
        if a == "local":
            out.append(InspectTarget("local", None))
        elif a.startswith("ssh://"):
            out.append(InspectTarget(a, a))
        elif a in hosts:
            ssh = hosts[a].get("ssh")
            if not ssh:
                raise UsageError(f"host {a} has no ssh: entry in cluster.yaml", "add ssh: user@address to it, or pass ssh://user@host")
            out.append(InspectTarget(a, ssh, host_name=a))
        else:
            raise UsageError(f"target {a!r} is neither ssh://user@host[:port] nor a host of cluster.yaml",
                             "pass ssh://user@host, a host name from cluster.yaml, or nothing for this machine")
    return out


def run(args: list[str], config_path: Path, write: bool, timeout_s: float) -> InspectResult:
    targets = targets_for(args, config_path)
    reports, errors = inspect(targets, timeout_s)
    diff = None
    if write and reports:
        before = config_path.read_text() if config_path.exists() else ""
        raw = yaml.safe_load(before) or {} if before else {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_path}: expected a mapping", "fix cluster.yaml or move it away")
        after = yaml.safe_dump(merge(raw, reports), sort_keys=False, default_flow_style=None, width=120)
        parse_config(after, str(config_path))  # never write an inventory that plan would reject
        diff = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                            str(config_path), str(config_path)))
        if diff:
            tmp = config_path.with_suffix(".yaml.tmp")
            tmp.write_text(after)
            os.replace(tmp, config_path)
    return InspectResult(tuple(reports), tuple(errors), diff)
