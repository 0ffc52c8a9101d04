"""logs: a host's container logs through compose (following the master's by default)."""

from __future__ import annotations

from ..runtime.stacks import stacks
from .context import Project


def run(project: Project, host: str | None, service: str | None, follow: bool) -> int:
    """Streams the logs to this terminal; returns compose's exit status."""
    chosen = stacks(project, [host] if host else None)
    if len(chosen) > 1 and follow:
        chosen = [s for s in chosen if s.is_master] or chosen[:1]
    rc = 0
    for stack in chosen:
        r = stack.compose("logs", *(["-f"] if follow else []), *([service] if service else []),
                          capture=False, timeout=None)
        rc = rc or r.returncode
    return rc
