"""Running inspect's probe (data/probe.sh) here or over SSH, several hosts in parallel.

The probe only prints raw tool output; inventory/discovery.py and the vendor records
parse it, so remote hosts need nothing installed beyond their GPU driver tools.
"""

from __future__ import annotations

import importlib.resources
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from ..inventory.discovery import HostReport, InspectTarget, parse_report
from ..vendors.nvidia import VENDOR as NVIDIA, nvml_gpus
from .ssh import ssh_argv


def probe_script() -> str:
    return importlib.resources.files("hydra_compose").joinpath("data/probe.sh").read_text()


MAX_OUTPUT = 32 << 20  # what one host may print before it is cut off (parse drops oversized sections)


def run_probe(target: InspectTarget, timeout_s: float) -> str:
    """Raw probe output; raises RuntimeError with a one-line reason. Another machine's output is
    read up to MAX_OUTPUT and for at most timeout_s + 30 seconds, however it trickles."""
    argv = ssh_argv(target.ssh, "bash -s", timeout_s) if target.ssh else ["bash", "-s"]
    try:
        rc, out, err = run_bounded(argv, probe_script().encode(), timeout_s + 30, MAX_OUTPUT)
    except FileNotFoundError:
        raise RuntimeError(f"{target.label}: ssh is not installed here") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{target.label}: no answer within {timeout_s + 30:.0f} s") from None
    text = out.decode("utf-8", "replace")
    if "==end" not in text:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1][:200] if lines else f"exit status {rc}"
        raise RuntimeError(f"{target.label}: {reason}")
    return text


def run_bounded(argv: list[str], stdin: bytes, timeout_s: float, limit: int) -> tuple[int, bytes, bytes]:
    """Run argv; keep at most limit bytes of stdout (64 KiB of stderr), kill it at timeout_s."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()

    def pump(stream, buf: bytearray, cap: int) -> None:  # noqa: ANN001
        for chunk in iter(lambda: stream.read(65536), b""):
            if len(buf) < cap:
                buf += chunk[:cap - len(buf)]
        stream.close()

    readers = [threading.Thread(target=pump, args=(proc.stdout, out, limit), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err, 65536), daemon=True)]
    for t in readers:
        t.start()
    try:
        proc.stdin.write(stdin)  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    except BrokenPipeError:
        pass
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        for t in readers:
            t.join(5)
    return proc.returncode, bytes(out), bytes(err)


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
