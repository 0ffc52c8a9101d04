"""Running a command here or on another host over ssh (inspect, power sweeps, calibrate).

ssh runs in batch mode (never a password prompt), with `--` before the destination
so that no host can be read as an option; HYDRA_SSH_CONFIG picks an ssh config file.
Docker's own SSH transport (DOCKER_HOST=ssh://...) is used for compose (runtime.stacks).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass

from ..errors import PowerError
from ..inventory.safe_values import ssh_target


def ssh_destination(spec: str) -> tuple[str, str | None]:
    """'ssh://user@host:port', 'user@host:port' or 'user@host' -> (user@host, port)."""
    m = re.fullmatch(r"(?:ssh://)?(?P<dest>[^:/]+)(?::(?P<port>\d+))?/?", spec)
    try:
        if not m:
            raise ValueError
        ssh_target(spec.rstrip("/"))  # no options smuggled in as a host ("-oProxyCommand=...")
    except ValueError:
        raise PowerError(f"ssh target {spec!r} is not user@host[:port]", "write it like ssh://root@10.0.0.2:22") from None
    return m["dest"], m["port"]


def ssh_argv(spec: str, remote_command: str, connect_timeout_s: float = 5) -> list[str]:
    dest, port = ssh_destination(spec)
    config = os.environ.get("HYDRA_SSH_CONFIG")
    return ["ssh", *(["-F", config] if config else []), "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, int(connect_timeout_s))}", *(["-p", port] if port else []),
            "--", dest, remote_command]


def docker_host(spec: str | None) -> str | None:
    """DOCKER_HOST for a host's `ssh:` entry (Docker's SSH transport), None for this machine."""
    if not spec:
        return None
    return spec if spec.startswith("ssh://") else f"ssh://{spec}"


@dataclass(frozen=True)
class Target:
    """Where a host's tools run: locally, or through ssh."""

    host: str
    ssh: str | None = None

    def argv(self, argv: list[str]) -> list[str]:
        if not self.ssh:
            return argv
        return ssh_argv(self.ssh, shlex.join(argv))

    def run(self, argv: list[str], timeout_s: float = 30) -> str:
        try:
            r = subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            raise PowerError(f"{argv[0]} not found on {self.host}", "install the GPU driver tools there") from None
        except subprocess.TimeoutExpired:
            raise PowerError(f"{argv[0]} on {self.host} did not answer in {timeout_s:.0f} s",
                             "check the host and its driver") from None
        if r.returncode != 0:
            text = (r.stderr or r.stdout).strip().splitlines()
            detail = text[-1][:200] if text else f"exit {r.returncode}"
            if "permission" in detail.lower() or "root" in detail.lower():
                raise PowerError(f"{argv[0]} on {self.host}: {detail}",
                                 "setting power limits needs root: run the sweep as root (or via sudo)")
            raise PowerError(f"{' '.join(argv[:3])} on {self.host} failed: {detail}", "check the GPU index and driver")
        return r.stdout
