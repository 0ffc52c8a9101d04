"""The cluster's lifecycle on the real CPU stack: up/status/swap/down, the API key,
load on --parallel 4, and recovery from a crashed, restarted and frozen worker."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import run_cli
from support.synthetic import TEST_SHAPES, write_gguf
from test_e2e_docker import SOURCE, cpu_project, hydra_containers  # noqa: F401 - fixture

pytestmark = pytest.mark.docker
URL = "http://127.0.0.1:8080"
ENV = {"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)}
ASK = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8}


def hc(proj: Path, *args: str) -> subprocess.CompletedProcess:
    r = run_cli(*args, cwd=proj, env=ENV)
    assert r.returncode == 0, f"hydra-compose {' '.join(args)}: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    return r


def container(proj: Path, service: str) -> str:
    f = proj / "compose" / "local" / "docker-compose.yml"
    return subprocess.run(["docker", "compose", "-f", str(f), "ps", "-q", service], capture_output=True, text=True,
                          check=True).stdout.strip()


def main_pid(cid: str) -> int:
    return int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cid], capture_output=True, text=True,
                              check=True).stdout)


def ask(key: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{URL}/v1/chat/completions", json=ASK, timeout=timeout,
                      headers={"Authorization": f"Bearer {key}"})


def answered_within(key: str, limit_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        try:
            if ask(key, timeout=10).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"no answer within {limit_s} s")


def stream_in_background(key: str, max_tokens: int) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        body = {**ASK, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
        try:
            with httpx.stream("POST", f"{URL}/v1/chat/completions", json=body, timeout=180,
                              headers={"Authorization": f"Bearer {key}"}) as r:
                lines = list(r.iter_lines())
            result["done"] = "data: [DONE]" in lines
        except httpx.HTTPError as exc:
            result["error"] = type(exc).__name__

    t = threading.Thread(target=run)
    t.start()
    return t, result


def status(proj: Path) -> dict:
    r = run_cli("status", "--json", cwd=proj, env=ENV)
    return json.loads(r.stdout)


def test_lifecycle_and_recovery(cpu_project):  # noqa: F811
    proj = cpu_project
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["master"]["api_key"] = True
    cfg["models"]["smollm2"].update(parallel=4, ctx=4096)
    cfg["models"]["tiny"] = {"file": "tiny.gguf", "ctx": 2048, "parallel": 1, "split": "all"}
    write_gguf(proj / "models" / "tiny.gguf", TEST_SHAPES[0])
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    hc(proj, "generate")
    key = re.search(r"^LLAMA_API_KEY=(\S+)$", (proj / "compose" / "local" / ".env").read_text(), re.M)[1]
    assert key not in (proj / "compose" / "local" / "docker-compose.yml").read_text()
    try:
        hc(proj, "up")
        # API key: required, never shown
        assert httpx.post(f"{URL}/v1/chat/completions", json=ASK, timeout=30).status_code == 401
        assert ask(key).status_code == 200
        st = status(proj)
        assert key not in json.dumps(st)
        assert st["master"]["healthy"] and st["master"]["model"] == "smollm2"
        assert [w["reachable"] for w in st["workers"]] == [True, True]
        assert {w["llama_cpp_ref"] for w in st["workers"]} == {"b11434"} and st["warnings"] == []
        # per device: each CPU worker's resident memory against its planned buffers
        plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)
        planned = {d["endpoint"]: d["total_bytes"] / 2**20 for d in plan["devices"]}
        assert [d["service"] for d in st["devices"]] == ["rpc-cpu0", "rpc-cpu1"]
        for d, endpoint in zip(st["devices"], sorted(planned)):
            print(f"status: {d['service']} planned {d['planned_mib']} MiB, resident {d['used_mib']} MiB")
            assert d["planned_mib"] == pytest.approx(planned[endpoint], abs=0.1)
            # weights and KV are written, so resident; untouched compute scratch may stay below the plan
            assert 0.75 * d["planned_mib"] <= d["used_mib"] <= d["planned_mib"] + max(0.02 * d["planned_mib"], 16)
            assert not d["over_plan"]

        # load: 4 concurrent streams x 25 requests on --parallel 4
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: ask(key, timeout=120).status_code, range(100)))
        assert codes.count(200) == 100, codes

        # a worker crashes mid-generation (kill -9 of its main process)
        thread, result = stream_in_background(key, 1500)
        time.sleep(3)
        subprocess.run(["kill", "-9", str(main_pid(container(proj, "rpc-cpu1")))], check=True)
        thread.join()
        assert not result.get("done"), result  # the in-flight request fails visibly
        recovered = answered_within(key, 60)
        print(f"recovery after a worker crash mid-generation: {recovered:.1f} s")

        # a worker restarts while the master is idle: the next request must not fail
        cid = container(proj, "rpc-cpu0")
        subprocess.run(["kill", "-9", str(main_pid(cid))], check=True)
        time.sleep(2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                if httpx.get(f"{URL}/health", timeout=2).status_code == 200 and \
                        not status(proj)["warnings"]:
                    break
            except httpx.HTTPError:
                pass
        time.sleep(3)
        assert ask(key).status_code == 200

        # a frozen worker: detected within 30 s, master flagged, generation resumes after unpause
        thread, result = stream_in_background(key, 600)
        time.sleep(2)
        worker = container(proj, "rpc-cpu1")
        subprocess.run(["docker", "pause", worker], check=True)
        start = time.monotonic()
        while not status(proj)["master"].get("stalled"):
            assert time.monotonic() - start < 30, "stall not detected within 30 s"
            time.sleep(1)
        print(f"frozen worker detected after {time.monotonic() - start:.1f} s")
        assert run_cli("status", cwd=proj, env=ENV).returncode == 1
        subprocess.run(["docker", "unpause", worker], check=True)
        thread.join()
        assert result.get("done"), result

        # swap: only the master restarts
        before = {s: container(proj, s) for s in ("rpc-cpu0", "rpc-cpu1")}
        r = hc(proj, "swap", "tiny")
        print(r.stdout.strip().splitlines()[-1])
        assert "workers restarted: none" in r.stdout
        assert {s: container(proj, s) for s in before} == before
        models = httpx.get(f"{URL}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
        assert models["data"][0]["id"] == "tiny"

        # users' keys: added and revoked on the running cluster; only llama-server restarts
        r = hc(proj, "keys", "add", "alice")
        alice = re.search(r"^HYDRA_KEY_ALICE=(\S+)$", (proj / "compose" / "local" / ".env").read_text(), re.M)[1]
        assert alice not in r.stdout + r.stderr and "restarted local/llama-server" in r.stdout
        assert ask(alice).status_code == 200 and ask(key).status_code == 200
        assert {s: container(proj, s) for s in before} == before
        hc(proj, "keys", "revoke", "alice")
        assert ask(alice).status_code == 401 and ask(key).status_code == 200
        assert {s: container(proj, s) for s in before} == before
        assert status(proj)["master"]["healthy"]  # the supervisor's own probes use the cluster's key

        # version skew: a worker image carrying another llama.cpp ref is flagged
        image = "hydra-compose/llama-cpp:b11434-cpu-rpc"
        original = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True,
                                  text=True, check=True).stdout.strip()
        try:
            subprocess.run(["docker", "build", "-q", "-t", image, "--label", "io.hydra-compose.llama-cpp-ref=b9999",
                            "-"], input=f"FROM {original}\n", text=True, check=True, capture_output=True)
            assert any("version skew" in w for w in status(proj)["warnings"])
            # ... and a master is never started beside a worker that runs it
            assert run_cli("down", cwd=proj, env=ENV).returncode == 0
            r = run_cli("up", "--no-build", cwd=proj, env=ENV)
            assert r.returncode == 1 and "runs llama.cpp b9999" in r.stderr and "Traceback" not in r.stderr, r.stderr
            f = proj / "compose" / "local" / "docker-compose.yml"
            master = subprocess.run(["docker", "compose", "-f", str(f), "ps", "-a", "-q", "llama-server"],
                                    capture_output=True, text=True, check=True).stdout.strip()
            assert master == "", "the master was created beside a worker of another llama.cpp"
        finally:
            subprocess.run(["docker", "tag", original, image], check=True)
        assert run_cli("up", "--no-build", cwd=proj, env=ENV).returncode == 0
    finally:
        run_cli("down", "-v", cwd=proj, env=ENV)
    assert hydra_containers() == []
