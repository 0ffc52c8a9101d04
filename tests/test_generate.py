"""generate: golden files for every example inventory, idempotence, edit protection, compose validation."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from hydra_compose.synthetic import TEST_SHAPES, write_gguf

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
            if p.is_file() and (p.parts[-3:-2] == ("compose",) or "dockerfiles" in p.parts)}


@pytest.mark.parametrize("name", EXAMPLES)
def test_golden(name, tmp_path):
    proj = example_project(tmp_path, name)
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    files = generated(proj)
    assert files, r.stdout
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        for rel, text in files.items():
            (golden / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden / rel).write_text(text)
    expected = {str(p.relative_to(golden)): p.read_text() for p in sorted(golden.rglob("*")) if p.is_file()}
    # the master's random API key differs per run
    files = {k: "\n".join(x if not x.startswith("LLAMA_API_KEY=") else "LLAMA_API_KEY=<random>"
                          for x in v.split("\n")) for k, v in files.items()}
    expected = {k: "\n".join(x if not x.startswith("LLAMA_API_KEY=") else "LLAMA_API_KEY=<random>"
                             for x in v.split("\n")) for k, v in expected.items()}
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
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0 and "left out" in r.stdout  # a small model decodes faster on the 4070 alone
    assert run_cli("generate", "--split", "all", cwd=proj).returncode == 0
    doc = yaml.safe_load((proj / "compose" / "mi50-worker" / "docker-compose.yml").read_text())
    (svc,) = doc["services"].values()
    assert svc["command"][:4] == ["-H", "192.168.1.31", "-p", "50052"]
    assert "0.0.0.0" not in str(doc)
    assert svc["devices"] == ["/dev/kfd", "/dev/dri/renderD128"]
    assert svc["labels"] == {"io.hydra-compose.role": "worker", "io.hydra-compose.host": "mi50-worker"}
    master = yaml.safe_load((proj / "compose" / "nvidia-master" / "docker-compose.yml").read_text())
    server = master["services"]["llama-server"]
    assert server["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]
    assert "--rpc" in server["command"] and "192.168.1.31:50052" in server["command"]
    rocm = (proj / "dockerfiles" / "rocm.Dockerfile").read_text()
    assert 'GPU_TARGETS="gfx906"' in rocm
    cuda = (proj / "dockerfiles" / "cuda.Dockerfile").read_text()
    assert 'CUDA_ARCHITECTURES="89"' in cuda and "13.0.1" in cuda


def test_cuda_version_covers_every_arch(tmp_path):
    proj = example_project(tmp_path, "cuda-mix")
    assert run_cli("generate", cwd=proj).returncode == 0
    cuda = (proj / "dockerfiles" / "cuda.Dockerfile").read_text()
    assert "nvidia/cuda:12.9.1-devel" in cuda and 'CUDA_ARCHITECTURES="61;86;120"' in cuda


def _fails(r, text):
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert text in r.stderr, r.stderr


def test_impossible_cuda_mix(tmp_path):
    proj = example_project(tmp_path, "cuda-mix")
    cfg = proj / "cluster.yaml"
    cfg.write_text(cfg.read_text().replace('name: "Tesla P40", arch: sm_61, vram_gb: 24, index: 1',
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
    assert "libgomp1 curl ca-certificates htop" in (proj / "dockerfiles" / "cpu.Dockerfile").read_text()
