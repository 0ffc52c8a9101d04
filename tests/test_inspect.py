"""inspect: recorded outputs of real cards' tools, sysfs trees, a real SSH server on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REQUIRE_HEAVY, run_cli

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "inspect"
RECORDED = HERE / "support" / "standins" / "recorded"
TOOLS = ("nvidia-smi", "amd-smi", "rocm-smi", "rocminfo")


def tool_env(tmp_path: Path, scenario: str | None, sysfs: Path | None = None) -> dict:
    """PATH with stand-ins for the tools recorded in the scenario (and no others), a sysfs root."""
    bin_dir = tmp_path / f"bin-{scenario}"
    bin_dir.mkdir(exist_ok=True)
    fixture = FIXTURES / scenario if scenario else tmp_path
    for tool in TOOLS:
        recorded = (fixture / f"{tool}.out").exists() or (fixture / f"{tool}.nocc").exists()
        if recorded and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(RECORDED)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_TOOLS_DIR": str(fixture),
            "HYDRA_SYSFS_ROOT": str(sysfs or tmp_path / "no-sysfs")}


def sysfs_tree(root: Path, cards: list[tuple[str, str, int | None, str]], gfx: list[int],
               renders: list[int] | None = None) -> Path:
    """cards: (vendor, device id, vram bytes, pci address); gfx: KFD gfx_target_version of GPU nodes;
    renders: each card's renderD minor."""
    for i, (vendor, device, vram, pci) in enumerate(cards):
        dev = root / "devices" / "pci0000:00" / pci
        dev.mkdir(parents=True)
        if renders:
            (dev / "drm" / f"renderD{renders[i]}").mkdir(parents=True)
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "device").write_text(device + "\n")
        if vram is not None:
            (dev / "mem_info_vram_total").write_text(f"{vram}\n")
        card = root / "class" / "drm" / f"card{i}"
        card.mkdir(parents=True)
        (card / "device").symlink_to(dev)
    nodes = root / "class" / "kfd" / "kfd" / "topology" / "nodes"
    (nodes / "0").mkdir(parents=True)
    (nodes / "0" / "properties").write_text("cpu_cores_count 16\ngfx_target_version 0\n")
    for i, v in enumerate(gfx, 1):
        (nodes / str(i)).mkdir()
        (nodes / str(i) / "properties").write_text(f"simd_count 240\ngfx_target_version {v}\ndrm_render_minor {127 + i}\n")
    return root


def inspect_json(tmp_path: Path, env: dict, *args: str) -> dict:
    r = run_cli("inspect", "--json", *args, cwd=tmp_path, env=env)
    assert "Traceback" not in r.stderr
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def devices(data: dict) -> list[dict]:
    (host,) = data["hosts"]
    return host["devices"]


def test_nvidia_smi_mixed_generations(tmp_path):
    d = devices(inspect_json(tmp_path, tool_env(tmp_path, "nvidia-mixed")))
    assert [(x["name"], x["arch"], x["vram_mib"]) for x in d] == [
        ("RTX 4070 Ti SUPER", "sm_89", 16376), ("RTX 5090", "sm_120", 32607), ("Tesla P40", "sm_61", 24576)]
    assert d[1] == {"vendor": "nvidia", "name": "RTX 5090", "arch": "sm_120", "vram_mib": 32607, "index": 1,
                    "bus_id": "00000000:02:00.0", "power_limit_w": 575.0, "power_min_w": 400.0, "power_max_w": 600.0,
                    "render_node": None}


def test_driver_rejecting_compute_cap_maps_names(tmp_path):
    data = inspect_json(tmp_path, tool_env(tmp_path, "nvidia-old-driver"))
    d = devices(data)
    assert [(x["name"], x["arch"]) for x in d] == [("RTX 3060", "sm_86"), ("Tesla P40", "sm_61")]
    assert d[1]["power_limit_w"] is None
    assert "compute_cap" in data["hosts"][0]["notes"][0]


def test_amd_smi(tmp_path):
    d = devices(inspect_json(tmp_path, tool_env(tmp_path, "amd-smi")))
    assert [(x["name"], x["arch"], x["vram_mib"], x["power_limit_w"], x["power_max_w"]) for x in d] == [
        ("Radeon RX 7900 XTX", "gfx1100", 24560, 327.0, 402.0), ("AMD Instinct MI50/MI60", "gfx906", 32752, 225.0, 300.0)]


def test_rocm_smi(tmp_path):
    (x,) = devices(inspect_json(tmp_path, tool_env(tmp_path, "rocm-smi")))
    assert (x["arch"], x["vram_mib"], x["bus_id"]) == ("gfx906", 32752, "0000:03:00.0")
    assert "MI50" in x["name"]


def test_rocminfo_with_sysfs_for_vram(tmp_path):
    sysfs = sysfs_tree(tmp_path / "sys", [("0x1002", "0x744c", 25753026560, "0000:03:00.0")], [110000])
    (x,) = devices(inspect_json(tmp_path, tool_env(tmp_path, "rocminfo", sysfs)))
    assert (x["name"], x["arch"], x["vram_mib"], x["bus_id"]) == ("Radeon RX 7900 XTX", "gfx1100", 24560, "0000:03:00.0")


def test_sysfs_only_host(tmp_path):
    sysfs = sysfs_tree(tmp_path / "sys", [("0x8086", "0x4680", None, "0000:00:02.0"),
                                          ("0x1002", "0x66a1", 34342961152, "0000:43:00.0"),
                                          ("0x1002", "0x740f", 68702699520, "0000:44:00.0")], [90006, 90010])
    d = devices(inspect_json(tmp_path, tool_env(tmp_path, None, sysfs)))
    assert [(x["arch"], x["vram_mib"], x["bus_id"]) for x in d] == [
        ("gfx906", 32752, "0000:43:00.0"), ("gfx90a", 65520, "0000:44:00.0")]


def test_cpu_only_host_is_valid(tmp_path):
    data = inspect_json(tmp_path, tool_env(tmp_path, None))
    host = data["hosts"][0]
    assert host["devices"] == [] and host["cpu_cores"] >= 1 and host["ram_mib"] > 0 and data["errors"] == []


def test_garbage_tool_output_is_a_note(tmp_path):
    data = inspect_json(tmp_path, tool_env(tmp_path, "garbage"))
    assert devices(data) == []
    assert "not understood" in data["hosts"][0]["notes"][0]


def test_unreachable_host_is_reported_others_still_inspected(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("inspect", "--json", "local", f"ssh://root@127.0.0.1:{port}", "--timeout", "2", cwd=tmp_path,
                env=tool_env(tmp_path, "nvidia-mixed"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    data = json.loads(r.stdout)
    assert len(data["hosts"]) == 1 and len(data["errors"]) == 1
    assert f"127.0.0.1:{port}" in r.stderr and "refused" in r.stderr.lower()


def test_unknown_target(tmp_path):
    r = run_cli("inspect", "gpu-box", cwd=tmp_path)
    assert r.returncode == 2 and "neither ssh://" in r.stderr and "Traceback" not in r.stderr


def test_write_turns_empty_inventory_into_a_plannable_cluster(tmp_path, model_dir):
    (tmp_path / "cluster.yaml").write_text(
        "# my cluster\nmaster: {host: box, port: 8080}\nhosts: []\n"
        "models:\n  m: {file: gqa-q8.gguf, ctx: 2048, default: true}\n")
    (tmp_path / "models").mkdir()
    shutil.copy(model_dir / "gqa-q8.gguf", tmp_path / "models")
    r = run_cli("inspect", "--write", cwd=tmp_path, env=tool_env(tmp_path, "nvidia-mixed"))
    assert r.returncode == 0, r.stderr
    assert "+hosts:" in r.stdout and "sm_120" in r.stdout  # the diff
    cfg = yaml.safe_load((tmp_path / "cluster.yaml").read_text())
    assert [d["arch"] for d in cfg["hosts"][0]["devices"]] == ["sm_89", "sm_120", "sm_61"]
    assert cfg["master"]["host"] == cfg["hosts"][0]["name"]
    plan = run_cli("plan", "--json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    # hand-set fields survive a second inspect; detected ones are refreshed
    cfg["hosts"][0]["devices"][0].update(rpc_port=50070, reserve_gb=1.5, vram_gb=99)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert run_cli("inspect", "--write", cwd=tmp_path, env=tool_env(tmp_path, "nvidia-mixed")).returncode == 0
    dev = yaml.safe_load((tmp_path / "cluster.yaml").read_text())["hosts"][0]["devices"][0]
    assert (dev["rpc_port"], dev["reserve_gb"], dev["vram_gb"]) == (50070, 1.5, 16.0)


@pytest.fixture
def sshd(tmp_path, monkeypatch):
    """A real OpenSSH server on a loopback port: throwaway host key, our key authorized,
    the stand-in GPU tools on the session's PATH."""
    if not Path("/usr/sbin/sshd").exists() or not shutil.which("ssh"):
        if REQUIRE_HEAVY:
            pytest.fail("openssh-server missing: scripts/test.sh installs it")
        pytest.skip("openssh-server not installed")
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    # ssh reads ~/.ssh of the passwd home, not $HOME: point it at a config of our own
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    (d / "ssh_config").write_text(f"Host 127.0.0.1\n  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n"
                                  "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    monkeypatch.setenv("HYDRA_SSH_CONFIG", str(d / "ssh_config"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = tool_env(tmp_path, "amd-smi")
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {d / 'sshd.pid'}\nSetEnv PATH={env['PATH']} FAKE_TOOLS_DIR={env['FAKE_TOOLS_DIR']} "
        f"HYDRA_SYSFS_ROOT={env['HYDRA_SYSFS_ROOT']}\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(5)


def test_inspect_over_real_ssh(tmp_path, sshd):
    data = inspect_json(tmp_path, {}, f"ssh://root@127.0.0.1:{sshd}")
    host = data["hosts"][0]
    assert host["target"] == f"ssh://root@127.0.0.1:{sshd}"
    assert [(x["arch"], x["vram_mib"]) for x in host["devices"]] == [("gfx1100", 24560), ("gfx906", 32752)]
    # by host name, through cluster.yaml's ssh: field, and merged with --write
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "master": {"host": "amd-box"},
        "hosts": [{"name": "amd-box", "address": "10.9.9.9", "ssh": f"root@127.0.0.1:{sshd}", "devices": []}]}))
    r = run_cli("inspect", "amd-box", "--write", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((tmp_path / "cluster.yaml").read_text())
    (host,) = cfg["hosts"]
    assert host["address"] == "10.9.9.9" and [d["arch"] for d in host["devices"]] == ["gfx1100", "gfx906"]
