"""status per device: the vendors' tools read inside the containers (recorded outputs of
nvidia-smi, the amdgpu sysfs probe and /proc/1/status), matched to cluster.yaml's devices and
compared with the plan; a device over its plan by more than the accuracy bound is flagged."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from hydra_compose import vendors
from hydra_compose.inventory.config import Device, parse_config
from hydra_compose.runtime.device_usage import bound_mib, device_rows

NVIDIA_SMI = """0, 00000000:01:00.0, 10342, 87, 251.34, 64
1, 00000000:02:00.0, 402, 0, [N/A], 38
"""
AMD_SYSFS = "renderD129 17179869184 93 212000000 71000\nrenderD128 1048576 - - 45000\n"
PROC_STATUS = "Name:\tggml-rpc-server\nVmPeak:\t  200000 kB\nVmRSS:\t  194752 kB\nThreads:\t3\n"


def test_nvidia_rows_matched_by_bus_id_then_order():
    a = Device(vendor="nvidia", vram_gb=24, index=0, bus_id="0000:02:00.0")
    b = Device(vendor="nvidia", vram_gb=12, index=1, bus_id="0000:01:00.0")
    first, second = vendors.NVIDIA.parse_usage(NVIDIA_SMI, [a, b])
    assert second.used_mib == 10342 and second.util_pct == 87 and second.power_w == pytest.approx(251.34)
    assert first.used_mib == 402 and first.power_w is None and first.temp_c == 38  # [N/A] is unknown, not 0
    unrecorded = [Device(vendor="nvidia", vram_gb=24, index=i) for i in range(2)]
    assert [u.used_mib for u in vendors.NVIDIA.parse_usage(NVIDIA_SMI, unrecorded)] == [10342, 402]
    assert vendors.NVIDIA.parse_usage("NVIDIA-SMI has failed", unrecorded) == [None, None]


def test_amd_rows_by_render_node_and_units():
    a = Device(vendor="amd", vram_gb=32, index=0, render_node="renderD129")
    b = Device(vendor="amd", vram_gb=24, index=1, render_node="renderD128")
    c = Device(vendor="amd", vram_gb=24, index=2, render_node="renderD130")
    ua, ub, uc = vendors.AMD.parse_usage(AMD_SYSFS, [a, b, c])
    assert ua.used_mib == 16384 and ua.util_pct == 93 and ua.power_w == 212 and ua.temp_c == 71
    assert ub.used_mib == 1 and ub.util_pct is None and ub.power_w is None
    assert uc is None
    argv = vendors.AMD.usage_probe([a, b])
    assert argv[:2] == ["sh", "-c"] and argv[-2:] == ["renderD129", "renderD128"]  # nodes are arguments, not code


def test_amd_probe_script_runs_and_prints_dashes_without_sysfs():
    argv = vendors.AMD.usage_probe([Device(vendor="amd", vram_gb=8, index=0, render_node="renderD999")])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    assert out.split() == ["renderD999", "-", "-", "-", "-"]
    assert vendors.AMD.parse_usage(out, [Device(vendor="amd", vram_gb=8, index=0, render_node="renderD999")])[0] \
        .used_mib is None


def test_cpu_worker_resident_memory():
    (u,) = vendors.CPU.parse_usage(PROC_STATUS, [Device(vendor="cpu", memory_gb=4)])
    assert u.used_mib == pytest.approx(190.19, abs=0.01)
    assert vendors.CPU.parse_usage("garbage", [Device(vendor="cpu", memory_gb=4)]) == [None]


class RecordedStack:
    """A stack whose `docker compose exec` answers with recorded tool output (unit test only)."""

    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs, self.calls = outputs, []

    def compose(self, *args: str, timeout: float | None = None):  # noqa: ANN201
        self.calls.append(args)
        service = args[2]
        return SimpleNamespace(returncode=0 if service in self.outputs else 1, stdout=self.outputs.get(service, ""))


def test_rows_against_the_plan_and_over_plan_warning():
    cfg = parse_config("""
master: {host: rig}
hosts:
  - name: rig
    address: 10.0.0.2
    devices:
      - {vendor: nvidia, vram_gb: 24, index: 0, bus_id: "0000:01:00.0"}
  - name: box
    address: 10.0.0.3
    devices:
      - {vendor: cpu, memory_gb: 8, threads: 4}
""")
    rig, box = cfg.hosts
    gpu, cpu = rig.devices[0], box.devices[0]
    plan = SimpleNamespace(devices=[SimpleNamespace(slot=SimpleNamespace(device=gpu), total_bytes=9000 * 2**20),
                                    SimpleNamespace(slot=SimpleNamespace(device=cpu), total_bytes=180 * 2**20)])
    stacks = {"rig": RecordedStack({"llama-server": NVIDIA_SMI}), "box": RecordedStack({"rpc-cpu0": PROC_STATUS})}
    running = {"rig": {"llama-server": {"State": "running"}}, "box": {"rpc-cpu0": {"State": "running"}}}
    rows, warnings = device_rows(cfg, plan, stacks, running)
    by = {r.service: r for r in rows}
    assert by["rpc-cpu0"].planned_mib == 180 and by["rpc-cpu0"].used_mib == pytest.approx(190.2, abs=0.1)
    assert not by["rpc-cpu0"].over_plan  # 10 MiB above: within max(2 %, 16 MiB)
    assert by["llama-server"].used_mib == 10342 and by["llama-server"].over_plan  # 1342 MiB more than planned
    assert len(warnings) == 1 and "llama-server" in warnings[0] and "10342 MiB" in warnings[0]
    assert bound_mib(9000) == 180
    # a container that is not running is not asked
    rows, _ = device_rows(cfg, plan, stacks, {"rig": {}, "box": {"rpc-cpu0": {"State": "exited"}}})
    assert all(r.used_mib is None for r in rows) and stacks["box"].calls[-1][2] == "rpc-cpu0"
    assert len(stacks["box"].calls) == 1


def test_status_watch_rejects_a_bad_interval(tmp_path: Path):
    from conftest import run_cli

    r = run_cli("status", "--watch", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--watch" in r.stderr
