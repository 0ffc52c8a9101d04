"""generate: golden files for every example inventory, idempotence, edit protection, compose validation."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from support.synthetic import TEST_SHAPES, write_gguf

EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"


def example_project(tmp_path: Path, name: str) -> Path:
    """The example inventory with a small synthetic model under the file name it expects."""
    text = (ROOT / "examples" / f"{name}.yaml").read_text()
    (tmp_path / "cluster.yaml").write_text(text)
    (tmp_path / "models").mkdir()
    for entry in yaml.safe_load(text)["models"].values():
        write_gguf(tmp_path / "models" / entry["file"], TEST_SHAPES[0])
    return tmp_path


def generated(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] in ("compose", "native", "dockerfiles")}


@pytest.mark.parametrize("name", EXAMPLES)
def test_golden(name, tmp_path):
    proj = example_project(tmp_path, name)
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    files = generated(proj)
    assert files, r.stdout
    golden = GOLDEN / name
    # the master's random API key and the cluster's keys and certificates differ per run
    files = {k: "\n".join(x.split("=", 1)[0] + "=<random>" if x.startswith(("LLAMA_API_KEY=", "GRAFANA_ADMIN_PASSWORD="))
                          else x for x in v.split("\n")) for k, v in files.items()}
    files = {k: "<random>\n" if k.endswith((".crt", ".key")) else v for k, v in files.items()}
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        for rel, text in files.items():
            (golden / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden / rel).write_text(text)
    expected = {str(p.relative_to(golden)): p.read_text() for p in sorted(golden.rglob("*")) if p.is_file()}
    assert files == expected


@pytest.mark.parametrize("name", EXAMPLES)
def test_compose_config_valid(name, tmp_path, compose_cli):
    proj = example_project(tmp_path, name)
    assert run_cli("generate", cwd=proj).returncode == 0
    for compose in sorted((proj / "compose").glob("*/docker-compose.yml")):
        r = subprocess.run(["docker", "compose", "-f", str(compose), "config", "-q"], capture_output=True, text=True,
                           cwd=compose.parent)
        assert r.returncode == 0, f"{compose}: {r.stderr}"


def test_regenerate_is_byte_identical_and_env_private(tmp_path):
    proj = example_project(tmp_path, "seed000-mixed")
    assert run_cli("generate", cwd=proj).returncode == 0
    first = generated(proj)
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0
    assert "wrote" not in r.stdout.replace("wrote    ", "wrote") or "unchanged" in r.stdout
    assert generated(proj) == first  # the API key is kept too
    env = proj / "compose" / "rocm-box" / ".env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    assert "LLAMA_API_KEY=" in env.read_text()
    assert "LLAMA_API_KEY=" not in (proj / "compose" / "rocm-box" / "docker-compose.yml").read_text().replace(
        "${LLAMA_API_KEY", "")


def test_edited_file_is_kept_without_force(tmp_path):
    proj = example_project(tmp_path, "cpu-default")
    assert run_cli("generate", cwd=proj).returncode == 0
    compose = proj / "compose" / "local" / "docker-compose.yml"
    compose.write_text(compose.read_text() + "# my edit\n")
    r = run_cli("generate", "--ctx", "2048", cwd=proj)
    assert r.returncode == 1 and "was edited" in r.stderr and "--force" in r.stderr
    assert compose.read_text().endswith("# my edit\n")
    r = run_cli("generate", "--ctx", "2048", "--force", cwd=proj)
    assert r.returncode == 0, r.stderr
    assert "# my edit" not in compose.read_text()


def test_worker_binds_host_address_and_labels(tmp_path):
    proj = example_project(tmp_path, "seed004-nvidia-mi50")
    cfg = proj / "cluster.yaml"
    cfg.write_text(cfg.read_text().replace("cluster:\n", "cluster:\n  rpc_tls: false\n", 1))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0 and "left out" in r.stdout  # a small model decodes faster on the 4070 alone
    assert run_cli("generate", "--split", "all", cwd=proj).returncode == 0
    doc = yaml.safe_load((proj / "compose" / "mi50-worker" / "docker-compose.yml").read_text())
    svc = doc["services"]["rpc-amd0"]  # beside it: the monitoring profile's exporters
    assert svc["command"][:4] == ["-H", "192.168.1.31", "-p", "50052"]
    assert "0.0.0.0" not in str(doc)
    assert svc["devices"] == ["/dev/kfd", "/dev/dri/renderD128"]
    assert svc["labels"] == {"io.hydra-compose.role": "worker", "io.hydra-compose.host": "mi50-worker"}
    master = yaml.safe_load((proj / "compose" / "nvidia-master" / "docker-compose.yml").read_text())
    server = master["services"]["llama-server"]
    assert server["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]
    assert "--rpc" in server["command"] and "192.168.1.31:50052" in server["command"]
    # with mutual TLS (the default for a LAN host) the worker listens on loopback behind stunnel,
    # which takes the host's address; the master dials its own tunnel
    cfg.write_text(cfg.read_text().replace("  rpc_tls: false\n", "", 1))
    assert run_cli("generate", "--split", "all", cwd=proj).returncode == 0
    doc = yaml.safe_load((proj / "compose" / "mi50-worker" / "docker-compose.yml").read_text())
    assert doc["services"]["rpc-amd0"]["command"][:2] == ["-H", "127.0.0.1"]
    assert doc["services"]["rpc-tls"]["entrypoint"] == ["stunnel", "/hydra/tls/stunnel.conf"]
    conf = (proj / "compose" / "mi50-worker" / "tls" / "stunnel.conf").read_text()
    assert "accept = 192.168.1.31:50052\nconnect = 127.0.0.1:50052" in conf and "requireCert = yes" in conf
    master = yaml.safe_load((proj / "compose" / "nvidia-master" / "docker-compose.yml").read_text())
    assert "127.0.1.1:50052" in master["services"]["llama-server"]["command"]
    assert master["services"]["llama-server"]["depends_on"]["rpc-tls"]["condition"] == "service_healthy"
    rocm = (proj / "dockerfiles" / "rocm.Dockerfile").read_text()
    assert 'GPU_TARGETS="gfx906"' in rocm
    cuda = (proj / "dockerfiles" / "cuda.Dockerfile").read_text()
    assert 'CUDA_ARCHITECTURES="89"' in cuda and "13.0.1" in cuda


def services(proj: Path, host: str) -> dict:
    return yaml.safe_load((proj / "compose" / host / "docker-compose.yml").read_text())["services"]


def test_cuda_release_per_host(tmp_path):
    # the P40 host stays on CUDA 12.9 (sm_61 left CUDA 13); the 5090 + 3090 master gets 13.x
    proj = example_project(tmp_path, "cuda-mix")
    assert run_cli("generate", cwd=proj).returncode == 0
    old = services(proj, "old-server")["rpc-nvidia0"]
    rig = services(proj, "rig")["llama-server"]
    assert old["build"]["args"]["BUILD_IMAGE"] == "nvidia/cuda:12.9.1-devel-ubuntu24.04"
    assert old["build"]["args"]["CUDA_ARCHITECTURES"] == "61"
    assert rig["build"]["args"]["BUILD_IMAGE"] == "nvidia/cuda:13.0.1-devel-ubuntu24.04"
    assert rig["build"]["args"]["CUDA_ARCHITECTURES"] == "86;120"
    assert old["image"] != rig["image"].replace("-server", "-rpc")  # different builds, different tags
    assert old["build"]["args"]["LLAMA_CPP_REF"] == rig["build"]["args"]["LLAMA_CPP_REF"] == "b11434"


def test_rocm_release_per_host_and_cdi(tmp_path):
    proj = example_project(tmp_path, "amd-mi50-xtx")
    assert run_cli("generate", cwd=proj).returncode == 0
    mi50, duo, xtx = services(proj, "mi50"), services(proj, "duo"), services(proj, "xtx")
    # MI50: ROCm 6.3 (6.4's rocBLAS has no gfx906 kernels), /dev/kfd + its render node + GIDs
    assert mi50["rpc-amd0"]["build"]["args"]["BUILD_IMAGE"] == "rocm/dev-ubuntu-24.04:6.3.4-complete"
    assert mi50["rpc-amd1"]["devices"] == ["/dev/kfd", "/dev/dri/renderD129"] and "group_add" in mi50["rpc-amd1"]
    assert "VIDEO_GID=44" in (proj / "compose" / "mi50" / ".env").read_text()
    # the 7900 XTX hosts: ROCm 6.4, CDI names, no GIDs needed
    assert xtx["llama-server"]["build"]["args"]["BUILD_IMAGE"] == "rocm/dev-ubuntu-24.04:6.4.4-complete"
    assert xtx["llama-server"]["devices"] == ["amd.com/gpu=0"] and "group_add" not in xtx["llama-server"]
    assert "GID" not in (proj / "compose" / "duo" / ".env").read_text()
    # one ggml-rpc-server for both duo GPUs
    assert list(duo) == ["rpc-amd", "rpc-tls"] and duo["rpc-amd"]["devices"] == ["amd.com/gpu=0", "amd.com/gpu=1"]
    assert duo["rpc-amd"]["command"][duo["rpc-amd"]["command"].index("-d") + 1] == "ROCm0,ROCm1"
    command = xtx["llama-server"]["command"]
    rpc = command[command.index("--rpc") + 1].split(",")
    split = command[command.index("--tensor-split") + 1].split(",")
    assert rpc.count("127.0.1.2:50052") == 1 and len(split) == len(rpc) + 2  # duo (tunnel 2): 2 devices; + the local GPU


def test_impossible_rocm_mix_on_one_host(tmp_path):
    proj = example_project(tmp_path, "amd-mi50-xtx")
    cfg = proj / "cluster.yaml"
    cfg.write_text(cfg.read_text().replace('name: "Instinct MI50", arch: gfx906, vram_gb: 32, index: 1',
                                           'name: "RX 9070 XT", arch: gfx1201, vram_gb: 16, index: 1'))
    _fails(run_cli("generate", cwd=proj), "no ROCm release runs all of gfx1201, gfx906")
    assert not (proj / "compose").exists() and not (proj / "dockerfiles").exists()


def test_per_host_server_ports_must_agree(tmp_path):
    proj = example_project(tmp_path, "nvidia-per-host")
    cfg = proj / "cluster.yaml"
    cfg.write_text(cfg.read_text().replace("vram_gb: 24, index: 0}", "vram_gb: 24, index: 0, rpc_port: 50070}", 1)
                   .replace("vram_gb: 24, index: 1}", "vram_gb: 24, index: 1, rpc_port: 50071}", 1))
    _fails(run_cli("generate", cwd=proj), "share one ggml-rpc-server")


def _fails(r, text):
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert text in r.stderr, r.stderr


def test_impossible_cuda_mix(tmp_path):
    proj = example_project(tmp_path, "cuda-mix")
    cfg = proj / "cluster.yaml"
    # per host: a K80 beside an RTX 5090 has no common CUDA release (a K80 beside a P40 has: 11.8)
    cfg.write_text(cfg.read_text().replace('name: "RTX 3090", arch: sm_86, vram_gb: 24, index: 1',
                                           'name: "Tesla K80", arch: sm_37, vram_gb: 12, index: 1'))
    _fails(run_cli("generate", cwd=proj), "no CUDA release builds all of")
    assert not (proj / "compose").exists() and not (proj / "dockerfiles").exists()


def test_amd_without_arch(tmp_path):
    proj = example_project(tmp_path, "rocm-mix")
    cfg = proj / "cluster.yaml"
    cfg.write_text(cfg.read_text().replace('arch: gfx906, ', ""))
    _fails(run_cli("generate", cwd=proj), "has no arch")
    assert not (proj / "compose").exists()


def test_port_collision(tmp_path):
    proj = example_project(tmp_path, "seed000-mixed")
    cfg = proj / "cluster.yaml"
    cfg.write_text(cfg.read_text().replace("rpc_port: 50053", "rpc_port: 50052"))
    _fails(run_cli("generate", cwd=proj), "already used")


def test_output_not_writable(tmp_path):
    proj = example_project(tmp_path, "cpu-default")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    _fails(run_cli("generate", "-o", str(blocked), cwd=proj), "cannot write")


def test_local_llama_cpp_source(tmp_path):
    proj = example_project(tmp_path, "cpu-default")
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text("")
    r = run_cli("generate", cwd=proj, env={"HYDRA_LLAMA_CPP_SOURCE": str(tree)})
    assert r.returncode == 0, r.stderr
    svc = yaml.safe_load((proj / "compose" / "local" / "docker-compose.yml").read_text())["services"]["rpc-cpu0"]
    assert svc["build"]["context"] == str(tree)
    assert svc["build"]["args"]["LLAMA_CPP_SOURCE"] == "context"
    assert Path(svc["build"]["dockerfile"]).is_file()


def test_user_template_override(tmp_path):
    proj = example_project(tmp_path, "cpu-default")
    (proj / "templates").mkdir()
    (proj / "templates" / "cpu.Dockerfile.j2").write_text(
        '{% extends "llama-cpp.Dockerfile.j2" %}\n{% block runtime_packages %} htop{% endblock %}\n')
    assert run_cli("generate", cwd=proj).returncode == 0
    assert "libgomp1 curl ca-certificates stunnel4 htop" in (proj / "dockerfiles" / "cpu.Dockerfile").read_text()
