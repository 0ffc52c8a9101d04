"""up: start the generated stacks — the master host's workers, then every other host's,
then the master once every worker answers and runs the master's llama.cpp."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ..errors import ClusterError
from ..inventory.topology import rpc_workers
from ..inventory.topology import Worker
from ..runtime.rpc_hello import PROTOCOL_OF_REF, hello
from ..runtime.stacks import check_worker_refs, expected_ref, port_open, stacks
from .context import Project

WORKER_WAIT_S = 120


@dataclass(frozen=True)
class UpResult:
    hosts: tuple[str, ...]  # in the order they were started


def _listening(w: Worker) -> bool:
    """The worker's host accepts connections for it (its TLS terminator, with rpc_tls)."""
    host, port = w.reach.rsplit(":", 1)
    return port_open(host, int(port))


def check_protocols(workers: list[Worker], ref: str | None) -> None:
    """Every worker — container or native — must speak the master's RPC protocol (HELLO). A busy
    worker (serving a running master) is not asked twice; anything that is not ggml-rpc-server fails."""
    # a TLS worker only answers through the master's tunnel, which starts with the master: its
    # protocol is checked by the supervisor's HELLO probe and by status instead
    workers = [w for w in workers if not w.tls_address]
    answers = {w.endpoint: hello(w.address, w.port) for w in workers}
    garbled = [w for w in workers if answers[w.endpoint].state == "garbled"]
    if garbled:
        w = garbled[0]
        raise ClusterError(f"{w.endpoint} on {w.host} answers, but not as a ggml-rpc-server (no RPC HELLO reply)",
                           f"check what listens on port {w.port} there")
    versions = [a.version for a in answers.values() if a.version]
    expected = PROTOCOL_OF_REF.get(ref or "") or (max(set(versions), key=versions.count) if versions else None)
    for w in workers:
        got = answers[w.endpoint].version
        if got and got != expected:
            want = ".".join(map(str, expected)) if expected else "?"
            raise ClusterError(f"worker {w.endpoint} on {w.host} speaks RPC protocol {'.'.join(map(str, got))}, the "
                               f"master's llama.cpp {ref or ''} speaks {want}: they cannot work together".replace("  ", " "),
                               f"install llama.cpp {ref or 'of the master'} on {w.host} (generate, then `hydra-compose "
                               f"up {w.host}`, or rerun native/{w.host}/install.* there)")


def run(project: Project, hosts: list[str] | None, report: Callable[[str], None], build: bool = True) -> UpResult:
    workers = rpc_workers(project.config)
    started = []
    for stack in stacks(project, hosts, act=True):
        if stack.is_master:
            own = [w.service for w in workers if w.host == stack.host.name]
            if own:  # the master host's own workers first, so their llama.cpp can be checked too
                report(f"{stack.host.name}: starting workers")
                stack.checked("up", "-d", *(["--build"] if build else []), "--wait", "--wait-timeout", "900", *own)
            # workers on the master's own host start with it (depends_on); the others must be up already
            pending = [w for w in workers if w.host != stack.host.name and not _listening(w)]
            deadline = time.monotonic() + WORKER_WAIT_S
            while pending and time.monotonic() < deadline:
                time.sleep(1)
                pending = [w for w in pending if not _listening(w)]
            if pending:
                names = ", ".join(w.reach for w in pending)
                raise ClusterError(f"workers {names} do not accept connections",
                                   "start their hosts first (`hydra-compose up HOST`) and check firewalls")
            ref = expected_ref(stack)
            check_worker_refs(project, ref)
            check_protocols(workers, ref)
        report(f"{stack.host.name}: starting {'master and workers' if stack.is_master else 'workers'}")
        stack.checked("up", "-d", *(["--build"] if build else []), "--wait", "--wait-timeout", "900")
        report(f"{stack.host.name}: up")
        started.append(stack.host.name)
    return UpResult(tuple(started))
