"""Every machine in the house: Vulkan and Metal devices, native workers (scripts and services
that really start ggml-rpc-server), driver-aware CUDA/ROCm releases, render nodes by PCI bus id,
and the RPC protocol check (HELLO) that up and status run against every worker."""

from __future__ import annotations

import configparser
import json
import os
import plistlib
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from support.fake_rpc import FakeRpc
from support.synthetic import TEST_SHAPES, write_gguf
from test_inspect import devices, inspect_json, sysfs_tree, tool_env

from hydra_compose.errors import ClusterError
from hydra_compose.inventory.topology import rpc_workers
from hydra_compose.runtime.rpc_hello import hello


def project(tmp_path: Path, cfg: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg.setdefault("models", {"m": {"file": "m.gguf", "ctx": 2048, "default": True}})
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp_path / "models").mkdir(exist_ok=True)
    for entry in cfg["models"].values():
        write_gguf(tmp_path / "models" / entry["file"], TEST_SHAPES[0])
    return tmp_path


def fails(r, text: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert text in r.stderr, r.stderr


def master_and(host: dict, master: dict | None = None) -> dict:
    return {"master": {"host": "front"}, "hosts": [
        master or {"name": "front", "address": "10.0.9.1", "devices": [{"vendor": "cpu", "memory_gb": 4}]}, host]}


# --- native workers ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_native_linux_worker_script_starts_a_real_worker(tmp_path, native_bin):
    port = free_port()
    proj = project(tmp_path, master_and({"name": "box", "address": "127.0.0.1", "runtime": "native", "devices": [
        {"vendor": "cpu", "memory_gb": 2, "threads": 1, "rpc_port": port}]}))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    folder = proj / "native" / "box"
    script = folder / "run-rpc-cpu0.sh"
    assert os.access(script, os.X_OK) and not (proj / "compose" / "box").exists()
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(folder / "hydra-hydra-rpc-cpu0.service")
    assert unit["Service"]["ExecStart"] == "/bin/bash %h/.hydra-compose/hydra/run-rpc-cpu0.sh"
    assert unit["Service"]["Restart"] == "always"
    for f in (script, folder / "install.sh"):
        assert subprocess.run(["bash", "-n", str(f)]).returncode == 0
    # the script, run for real against binaries we already have: a worker on the plan's port, all devices named
    proc = subprocess.Popen(["bash", str(script)], env={**os.environ, "HYDRA_LLAMA_CPP_BIN": str(native_bin),
                                                         "HYDRA_HOME": str(tmp_path / "home")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        answer = hello("127.0.0.1", port, 1)
        while answer.state == "refused" and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = hello("127.0.0.1", port, 1)
        assert answer.version == (7, 0, 0), answer
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode()
    assert "-d CPU" in script.read_text() and "CPU" in out  # the server serves exactly its device


def test_native_windows_and_macos_files(tmp_path):
    proj = project(tmp_path / "ex", yaml.safe_load((ROOT / "examples" / "seed000-mixed.yaml").read_text()))
    assert run_cli("generate", "--split", "all", cwd=proj).returncode == 0
    win = proj / "native" / "win-desktop"
    assert sorted(p.name for p in win.iterdir()) == ["install.ps1", "run-rpc-nvidia0.ps1", "run-rpc-nvidia1.ps1"]
    run1 = (win / "run-rpc-nvidia1.ps1").read_text()
    # its own GPU only, CUDA numbered like nvidia-smi, the release archive of the cluster's ref for its driver
    assert "'-d' 'CUDA1'" in run1 and "PCI_BUS_ID" in run1 and "llama-b11434-bin-win-cuda-12.4-x64.zip" in run1
    install = (win / "install.ps1").read_text()
    assert "-LocalPort 50053 -RemoteAddress '192.168.1.10'" in install  # only the master may connect
    master = yaml.safe_load((proj / "compose" / "rocm-box" / "docker-compose.yml").read_text())
    command = master["services"]["llama-server"]["command"]
    assert command[command.index("--rpc") + 1] == "192.168.1.100:50052,192.168.1.100:50053"
    mac = project(tmp_path / "mac", yaml.safe_load((ROOT / "examples" / "mac-studio.yaml").read_text()))
    assert run_cli("generate", cwd=mac).returncode == 0
    plist = plistlib.loads((mac / "native" / "mac-studio" / "io.hydra-compose.studio.rpc-metal0.plist").read_bytes())
    assert plist["KeepAlive"] is True and plist["Label"] == "io.hydra-compose.studio.rpc-metal0"
    run = (mac / "native" / "mac-studio" / "run-rpc-metal0.sh").read_text()
    assert "-d MTL0" in run and "llama-b11434-bin-macos-arm64.tar.gz" in run and "trap '' PIPE" in run


@pytest.mark.parametrize("host, text", [
    ({"os": "windows"}, "os: windows needs runtime: native"),
    ({"runtime": "native", "devices": [{"vendor": "metal", "vram_gb": 48}]}, "needs os: macos and runtime: native"),
    ({"runtime": "native", "os": "macos", "devices": [{"vendor": "nvidia", "vram_gb": 24, "arch": "sm_89"}]},
     "no NVIDIA GPU serves llama.cpp on macOS"),
    ({"runtime": "native", "os": "windows", "devices": [{"vendor": "amd", "vram_gb": 24, "arch": "gfx1100"}]},
     "use vendor: vulkan"),
    ({"devices": [{"vendor": "metal", "vram_gb": 48}]}, "needs os: macos"),
])
def test_impossible_machines_are_refused(tmp_path, host, text):
    proj = project(tmp_path, master_and({"name": "other", "address": "10.0.9.2", **host}))
    fails(run_cli("plan", cwd=proj), text)


def test_native_master_is_refused(tmp_path):
    cfg = {"master": {"host": "mac"}, "hosts": [{"name": "mac", "address": "10.0.9.3", "runtime": "native",
                                                 "os": "macos", "devices": [{"vendor": "metal", "vram_gb": 48}]}]}
    fails(run_cli("plan", cwd=project(tmp_path, cfg)), "choose a Docker host as master")


# --- driver-aware images ----------------------------------------------------------------------
def nvidia_host(arch: str = "sm_89", **fields) -> dict:
    return {"name": "gpu", "address": "10.0.9.4", **fields,
            "devices": [{"vendor": "nvidia", "name": "RTX 4070 Ti", "arch": arch, "vram_gb": 12, "index": 0}]}


def built_with(proj: Path) -> dict:
    doc = yaml.safe_load((proj / "compose" / "gpu" / "docker-compose.yml").read_text())
    return doc["services"]["rpc-nvidia0"]["build"]["args"]


def test_cuda_release_follows_the_driver(tmp_path):
    proj = project(tmp_path, master_and(nvidia_host(nvidia_driver="550.144.03")))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    assert built_with(proj)["BUILD_IMAGE"] == "nvidia/cuda:12.4.1-devel-ubuntu22.04"
    assert "driver" not in r.stdout  # known driver: nothing to warn about
    proj = project(tmp_path / "b", master_and(nvidia_host()))
    r = run_cli("generate", cwd=proj)
    assert built_with(proj)["BUILD_IMAGE"] == "nvidia/cuda:13.0.1-devel-ubuntu24.04"
    assert "needs NVIDIA driver 580.82.07 or newer and the host's driver is not recorded" in r.stdout


@pytest.mark.parametrize("host, text", [
    (nvidia_host(nvidia_driver="470.256.02"), "NVIDIA driver 470.256.02 is too old for every CUDA release"),
    (nvidia_host(toolkit={"cuda": "12.6.3"}, arch="sm_120"), "CUDA 12.6.3 cannot build sm_120"),
    (nvidia_host(toolkit={"cuda": "12.8.1"}, nvidia_driver="560.35.03"), "CUDA 12.8.1 needs NVIDIA driver 570"),
    (nvidia_host(toolkit={"cuda": "10.2.89"}), "toolkit cuda 10.2.89 is not a CUDA release we know"),
    ({"name": "gpu", "address": "10.0.9.4", "toolkit": {"rocm": "6.3.4"},
      "devices": [{"vendor": "amd", "arch": "gfx1201", "vram_gb": 16, "index": 0}]}, "ROCm 6.3.4 has no kernels for gfx1201"),
])
def test_toolkits_that_cannot_work(tmp_path, host, text):
    proj = project(tmp_path, master_and(host))
    fails(run_cli("generate", cwd=proj), text)
    assert not (proj / "compose").exists()


def test_toolkit_override_and_borrowed_gfx906_kernels(tmp_path):
    proj = project(tmp_path / "ex", yaml.safe_load((ROOT / "examples" / "igpu-amd.yaml").read_text()))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    mi50 = yaml.safe_load((proj / "compose" / "mi50" / "docker-compose.yml").read_text())["services"]["rpc-amd0"]
    args = mi50["build"]["args"]
    assert args["BUILD_IMAGE"] == "rocm/dev-ubuntu-24.04:7.0.2-complete"
    assert (args["ROCBLAS_KERNELS_IMAGE"], args["ROCBLAS_KERNEL_TARGETS"]) == (
        "rocm/dev-ubuntu-24.04:6.3.4-complete", "gfx906")
    dockerfile = (proj / "dockerfiles" / "rocm.Dockerfile").read_text()
    assert "COPY --from=rocblas-kernels /kernels/ /opt/rocm/lib/rocblas/library/" in dockerfile
    desktop = yaml.safe_load((proj / "compose" / "desktop" / "docker-compose.yml").read_text())["services"]
    # the XTX's own render node (the iGPU is renderD128); ROCm no newer than the host's 6.4
    assert desktop["llama-server"]["devices"] == ["/dev/kfd", "/dev/dri/renderD129"]
    assert desktop["llama-server"]["build"]["args"]["BUILD_IMAGE"] == "rocm/dev-ubuntu-24.04:6.4.4-complete"
    assert "guessed" not in r.stdout


def test_old_host_rocm_gets_the_oldest_release_and_a_warning(tmp_path):
    host = {"name": "gpu", "address": "10.0.9.4", "rocm_version": "6.1.2",
            "devices": [{"vendor": "amd", "arch": "gfx1100", "vram_gb": 24, "index": 0}]}
    r = run_cli("generate", cwd=project(tmp_path, master_and(host)))
    assert r.returncode == 0, r.stderr
    assert "gpu has ROCm 6.1.2; its image uses ROCm 6.3.4" in r.stdout
    assert "renderD128 for amd is guessed from its index" in r.stdout


# --- inspect: drivers, render nodes by bus id, Vulkan devices -----------------------------------
def test_inspect_records_driver_and_render_nodes_by_bus_id(tmp_path):
    # an NVIDIA card, the Intel iGPU and an AMD dGPU: the AMD card's node is the third, not renderD128
    sysfs = sysfs_tree(tmp_path / "sys", [("0x10de", "0x2782", None, "0000:01:00.0"),
                                          ("0x8086", "0xa780", None, "0000:00:02.0"),
                                          ("0x1002", "0x744c", 25753026560, "0000:03:00.0")], [110000],
                       renders=[128, 129, 130])
    fixture = tmp_path / "tools"
    fixture.mkdir()
    (fixture / "nvidia-smi.out").write_text(
        "0, NVIDIA GeForce RTX 4070 Ti, 12282, 8.9, 285.00, 150.00, 320.00, 00000000:01:00.0\n")
    (fixture / "nvidia-smi.driver").write_text("550.144.03\n")
    (fixture / "amd-smi.out").write_text(json.dumps([{"gpu": 0, "asic": {"market_name": "Radeon RX 7900 XTX",
                                                                          "target_graphics_version": "gfx1100"},
                                                      "vram": {"size": {"value": 24560, "unit": "MB"}},
                                                      "bus": {"bdf": "0000:03:00.0"}}]))
    rocm = tmp_path / "rocm" / ".info"
    rocm.mkdir(parents=True)
    (rocm / "version").write_text("6.4.1-120\n")
    env = {**tool_env(tmp_path, None, sysfs), "FAKE_TOOLS_DIR": str(fixture), "HYDRA_ROCM_ROOT": str(rocm.parent)}
    for tool in ("nvidia-smi", "amd-smi"):
        (Path(env["PATH"].split(os.pathsep)[0]) / tool).symlink_to(ROOT / "tests" / "support" / "standins" / "recorded")
    data = inspect_json(tmp_path, env)
    host = data["hosts"][0]
    assert (host["nvidia_driver"], host["rocm_version"]) == ("550.144.03", "6.4.1")
    nodes = {(d["vendor"], d["name"]): d["render_node"] for d in devices(data)}
    assert nodes == {("nvidia", "RTX 4070 Ti"): "renderD128", ("amd", "Radeon RX 7900 XTX"): "renderD130"}
    assert any("integrated GPU skipped" in n for n in host["notes"])
    # --write records them; generate hands the worker renderD130 and builds CUDA 12.4 for R550
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({"master": {"host": "front"}, "hosts": [
        {"name": "front", "address": "10.0.9.1", "devices": [{"vendor": "cpu", "memory_gb": 4}]}],
        "models": {"m": {"file": "m.gguf", "ctx": 2048}}}))
    (tmp_path / "models").mkdir()
    write_gguf(tmp_path / "models" / "m.gguf", TEST_SHAPES[0])
    r = run_cli("inspect", "--write", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((tmp_path / "cluster.yaml").read_text())
    box = cfg["hosts"][1]
    assert box["nvidia_driver"] == "550.144.03" and box["rocm_version"] == "6.4.1"
    box["address"] = "10.0.9.7"
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli("generate", "--split", "all", cwd=tmp_path).returncode == 0
    services = yaml.safe_load((tmp_path / "compose" / box["name"] / "docker-compose.yml").read_text())["services"]
    assert services["rpc-amd0"]["devices"] == ["/dev/kfd", "/dev/dri/renderD130"]
    assert services["rpc-nvidia0"]["build"]["args"]["BUILD_IMAGE"] == "nvidia/cuda:12.4.1-devel-ubuntu22.04"


def test_inspect_finds_vulkan_devices(tmp_path):
    # an Intel Arc A770 beside the iGPU, and an RX 6600 (gfx1032: no ROCm kernels)
    sysfs = sysfs_tree(tmp_path / "sys", [("0x8086", "0xa780", None, "0000:00:02.0"),
                                          ("0x8086", "0x56a0", None, "0000:03:00.0"),
                                          ("0x1002", "0x73ff", 8573157376, "0000:05:00.0")], [100302],
                       renders=[128, 129, 130])
    data = inspect_json(tmp_path, tool_env(tmp_path, None, sysfs))
    found = [(d["vendor"], d["name"], d["arch"], d["vram_mib"], d["render_node"]) for d in devices(data)]
    assert found == [("vulkan", "AMD GPU 0x73ff", "gfx1032", 8176, "renderD130"),
                     ("vulkan", "Arc A770", "xe-hpg", 16384, "renderD129")]
    assert any("gfx1032) has no ROCm kernels" in n for n in data["hosts"][0]["notes"])


# --- the RPC protocol check ------------------------------------------------------------------
def test_hello_real_worker_busy_refused_and_garbled(native_bin, tmp_path):
    port = free_port()
    # started as our images and native scripts start it: a client that gives up while queued makes the
    # worker write to a closed socket, and an unignored SIGPIPE would kill it
    proc = subprocess.Popen(["sh", "-c", "trap '' PIPE; exec \"$0\" -p \"$1\"", str(native_bin / "ggml-rpc-server"),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    fake = FakeRpc(garbage=True)
    try:
        deadline = time.monotonic() + 10
        while hello("127.0.0.1", port, 1).state == "refused" and time.monotonic() < deadline:
            time.sleep(0.1)
        start = time.monotonic()
        assert hello("127.0.0.1", port).version == (7, 0, 0)
        print(f"HELLO answered in {1000 * (time.monotonic() - start):.1f} ms")
        with socket.create_connection(("127.0.0.1", port)) as first:  # the worker now serves this client
            first.sendall(bytes([14]) + (24).to_bytes(8, "little") + bytes(24))
            first.recv(64)
            start = time.monotonic()
            assert hello("127.0.0.1", port, 1).state == "busy" and time.monotonic() - start < 5
        assert hello("127.0.0.1", free_port()).state == "refused"
        assert hello("127.0.0.1", fake.port).state == "garbled"
        assert proc.poll() is None  # the worker survived the queued client that gave up
    finally:
        fake.close()
        proc.terminate()
        proc.wait(10)


def test_up_refuses_workers_of_another_protocol(native_bin):
    from hydra_compose.commands.up import check_protocols
    from hydra_compose.inventory.config import ClusterConfig

    port = free_port()
    proc = subprocess.Popen([str(native_bin / "ggml-rpc-server"), "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    old = FakeRpc((6, 1, 0))
    try:
        time.sleep(1)
        cfg = ClusterConfig.model_validate({"master": {"host": "a"}, "hosts": [
            {"name": "a", "address": "127.0.0.1", "devices": [{"vendor": "cpu", "memory_gb": 1, "rpc_port": port}]},
            {"name": "old-box", "address": "localhost", "runtime": "native",
             "devices": [{"vendor": "cpu", "memory_gb": 1, "rpc_port": old.port}]}]})
        with pytest.raises(ClusterError) as err:
            check_protocols(rpc_workers(cfg), "b11434")
        assert f"worker localhost:{old.port} on old-box speaks RPC protocol 6.1.0" in str(err.value)
        assert "speaks 7.0.0" in str(err.value)
        check_protocols(rpc_workers(cfg)[:1], "b11434")  # the real worker alone passes
    finally:
        old.close()
        proc.terminate()
        proc.wait(10)


def test_up_never_starts_a_remote_host_on_the_local_engine(tmp_path):
    proj = project(tmp_path, {"master": {"host": "front"}, "hosts": [
        {"name": "front", "address": "127.0.0.1", "devices": [{"vendor": "cpu", "memory_gb": 1}]},
        {"name": "far", "address": "203.0.113.9", "devices": [{"vendor": "cpu", "memory_gb": 1}]}]})
    assert run_cli("generate", cwd=proj).returncode == 0
    for verb in ("up", "down"):
        fails(run_cli(verb, cwd=proj), "far (203.0.113.9) is not this machine and has no ssh: entry")


MAC_PROBE = """==hostname
Studio.local
==addresses
127.0.0.1
10.0.0.5
==os
Darwin
==cores
24
==apple
Apple M2 Ultra
206158430208
==meminfo
==end
"""


def test_inspect_a_mac_gives_a_native_metal_worker():
    from hydra_compose.inventory.config import parse_config
    from hydra_compose.inventory.discovery import InspectTarget, merge, parse_report

    rep = parse_report(InspectTarget("ssh://me@10.0.0.5", "me@10.0.0.5"), MAC_PROBE)
    assert (rep.os, rep.ram_mib, rep.address) == ("macos", 196608, "10.0.0.5")
    (gpu,) = rep.devices
    assert (gpu.vendor, gpu.name, gpu.vram_mib) == ("metal", "M2 Ultra", 147456)
    merged = merge({"master": {"host": "front"}, "hosts": [
        {"name": "front", "address": "10.0.0.2", "devices": [{"vendor": "cpu", "memory_gb": 8}]}]}, [rep])
    mac = merged["hosts"][1]
    assert (mac["os"], mac["runtime"], mac["devices"][0]["vram_gb"]) == ("macos", "native", 144.0)
    parse_config(yaml.safe_dump(merged))  # what --write would write, plannable
