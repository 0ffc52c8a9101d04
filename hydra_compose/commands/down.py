"""down: stop the stacks, the master first, then the workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..runtime.stacks import stacks
from .context import Project


@dataclass(frozen=True)
class DownResult:
    hosts: tuple[str, ...]  # in the order they were stopped


def run(project: Project, hosts: list[str] | None, report: Callable[[str], None], volumes: bool = False) -> DownResult:
    stopped = []
    for stack in reversed(stacks(project, hosts, act=True)):
        report(f"{stack.host.name}: stopping")
        stack.checked("down", *(["-v"] if volumes else []), "--timeout", "10")
        report(f"{stack.host.name}: down")
        stopped.append(stack.host.name)
    return DownResult(tuple(stopped))
