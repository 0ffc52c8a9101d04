"""inspect: find each target's GPUs, RAM, Docker and GIDs; --write merges them into cluster.yaml."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError, UsageError
from ..inventory.config import parse_config, read_config_data, read_config_text
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
    if config_path.exists() or config_path.is_symlink():
        raw = read_config_data(config_path)
        listed = raw.get("hosts")
        hosts = {h.get("name"): h for h in (listed if isinstance(listed, list) else []) if isinstance(h, dict)}
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
    # an existing cluster.yaml that cannot be read is refused before anything is probed or written
    existing = config_path.exists() or config_path.is_symlink()
    before = read_config_text(config_path) if write and existing else ""
    raw = read_config_data(config_path) if write and existing else {}
    targets = targets_for(args, config_path)
    reports, errors = inspect(targets, timeout_s)
    diff = None
    if write and reports:
        after = yaml.safe_dump(merge(raw, reports), sort_keys=False, default_flow_style=None, width=120)
        parse_config(after, str(config_path))  # never write an inventory that plan would reject
        diff = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                            str(config_path), str(config_path)))
        if diff:
            write_atomically(config_path, after)
    return InspectResult(tuple(reports), tuple(errors), diff)


def write_atomically(path: Path, text: str) -> None:
    """Replace path with text: a temporary file beside it, then one rename (never half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if tmp.is_symlink() or (tmp.exists() and not tmp.is_file()):
            raise ConfigError(f"{tmp} is in the way", f"remove {tmp}")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}", "check the folder's permissions and free space") from None
