"""Running inspect's probe (data/probe.sh) here or over SSH, several hosts in parallel.

The probe only prints raw tool output; inventory/discovery.py and the vendor records
parse it, so remote hosts need nothing installed beyond their GPU driver tools.
"""

from __future__ import annotations

import importlib.resources
import subprocess
from concurrent.futures import ThreadPoolExecutor

from ..inventory.discovery import HostReport, InspectTarget, parse_report
from ..vendors.nvidia import VENDOR as NVIDIA, nvml_gpus
from .ssh import ssh_argv


def probe_script() -> str:
    return importlib.resources.files("hydra_compose").joinpath("data/probe.sh").read_text()


def run_probe(target: InspectTarget, timeout_s: float) -> str:
    """Raw probe output; raises RuntimeError with a one-line reason."""
    argv = ssh_argv(target.ssh, "bash -s", timeout_s) if target.ssh else ["bash", "-s"]
    try:
        r = subprocess.run(argv, input=probe_script(), capture_output=True, text=True, timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{target.label}: no answer within {timeout_s + 30:.0f} s") from None
    except FileNotFoundError:
        raise RuntimeError(f"{target.label}: ssh is not installed here") from None
    if "==end" not in r.stdout:
        lines = r.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {r.returncode}"
        raise RuntimeError(f"{target.label}: {reason}")
    return r.stdout


def inspect(targets: list[InspectTarget], timeout_s: float) -> tuple[list[HostReport], list[str]]:
    def one(t: InspectTarget) -> HostReport | str:
        try:
            rep = parse_report(t, run_probe(t, timeout_s))
        except RuntimeError as exc:
            return str(exc)
        if not t.ssh:
            nvml = nvml_gpus()
            if nvml is not None:
                rep.devices = nvml + [d for d in rep.devices if d.vendor != NVIDIA.name]
        return rep

    with ThreadPoolExecutor(max(1, len(targets))) as pool:
        results = list(pool.map(one, targets))
    reports = [r for r in results if isinstance(r, HostReport)]
    errors = [r for r in results if isinstance(r, str)]
    return reports, errors
