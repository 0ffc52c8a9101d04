"""The generated Kubernetes pods, run for real without Kubernetes: each StatefulSet's and the
Deployment's containers as Docker runs them (support/pod_runner.py: a pod network with the
Services' DNS names, sidecars in their pod's network namespace, ConfigMaps, Secrets from the
kustomize generator files). Two CPU worker pods on two "nodes" with mutual TLS on by default
(box has a LAN address), the supervisor from the ConfigMap as the master's entrypoint: SmolLM2
answers through the openai SDK with the generated key, a worker pod that restarts is followed
by the master, a plain connection to a worker pod gets no RPC answer, status and bench work
against the published Service address."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time

import httpx
import pytest
import yaml

from conftest import run_cli
from support.localrun import free_port
from support.pod_runner import PodRunner, docker
from test_e2e_docker import SOURCE, check_master, cpu_project, hydra_containers  # noqa: F401 - fixture

from hydra_compose.runtime.rpc_hello import hello

pytestmark = pytest.mark.docker
ASK = {"model": "smollm2", "max_tokens": 8,
       "messages": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"}]}


def answers(url: str, key: str) -> bool:
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=ASK, timeout=30, headers={"Authorization": f"Bearer {key}"})
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check, limit_s: float, what: str, pods: PodRunner) -> float:  # noqa: ANN001
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if check():
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {limit_s} s\n{pods.logs()[-6000:]}")


def build_commands_match_compose(proj) -> None:  # noqa: ANN001
    """k8s/build-images.sh builds what compose builds: same Dockerfile, target, args, context, tag."""
    script = (proj / "k8s" / "build-images.sh").read_text()
    built = {}
    for line in script.splitlines():
        if line.startswith("docker build "):
            argv = shlex.split(line)
            args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv[argv.index("--target"):]
                    if "=" in a and argv[argv.index(a) - 1] == "--build-arg"}
            built[argv[argv.index("-t") + 1]] = (argv[argv.index("--target") + 1], args, argv[-1])
    r = run_cli("generate", "--target", "compose", cwd=proj, env={"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)})
    assert r.returncode == 0, r.stderr
    seen = {}
    for f in (proj / "compose").glob("*/docker-compose.yml"):
        for svc in yaml.safe_load(f.read_text())["services"].values():
            b = svc["build"]
            seen[svc["image"]] = (b["target"], {k: str(v) for k, v in b["args"].items()}, b["context"])
    assert built and set(built) <= set(seen)
    for image, (target, args, context) in built.items():
        assert (target, args) == seen[image][:2], image
        assert context == seen[image][2], image
    # the images the pods run: built the way the e2e tests build them (BuildKit's cache, seconds when warm)
    for f in sorted((proj / "compose").glob("*/docker-compose.yml")):
        r = subprocess.run(["docker", "compose", "-f", str(f), "build"], capture_output=True, text=True, timeout=3000)
        assert r.returncode == 0, r.stderr[-3000:]


def test_generated_pods_serve_with_tls_and_follow_a_restarted_worker(cpu_project, tmp_path):  # noqa: F811
    proj = cpu_project
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["master"]["api_key"] = True
    cfg["master"]["failover_s"] = 300  # this test restarts a worker: the master must follow, not fail over
    cfg["hosts"] = [
        {"name": "local", "address": "127.0.0.1",
         "devices": [{"vendor": "cpu", "memory_gb": 1, "threads": 1, "rpc_port": 50052}]},
        {"name": "box", "address": "10.77.0.2",  # a LAN address: rpc_tls is on by default
         "devices": [{"vendor": "cpu", "memory_gb": 1, "threads": 1, "rpc_port": 50053}]}]
    cfg["models"]["smollm2"].update(ctx=4096, parallel=1, split="all")
    port = free_port()
    cfg["cluster"]["target"] = "kubernetes"  # status and bench then ask the Service address
    cfg["kubernetes"] = {"api_url": f"http://127.0.0.1:{port}"}
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=proj, env={"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)})
    assert r.returncode == 0, r.stderr
    build_commands_match_compose(proj)
    master_yaml = (proj / "k8s" / "master.yaml").read_text()
    assert "rpc-cpu0-local.hydra.svc:50052,127.0.1.1:50053" in master_yaml  # local pod direct, box via TLS
    key = re.search(r"LLAMA_API_KEY=(\S+)", (proj / "k8s" / "api-key.env").read_text())[1]
    pods = PodRunner(proj / "k8s", proj / "models", tmp_path / "pods")
    try:
        workers = pods.objects("StatefulSet")
        assert sorted(w["metadata"]["name"] for w in workers) == ["rpc-cpu0-box", "rpc-cpu0-local"]
        for w in workers:
            pods.start(w)
        master = pods.objects("Deployment")[0]
        pods.start(master, publish={port: 8080})
        url = f"http://127.0.0.1:{port}"
        loaded = wait_until(lambda: httpx.get(f"{url}/health", timeout=3).status_code == 200
                            if _up(url) else False, 300, "master healthy", pods)
        print(f"pods: master healthy {loaded:.1f} s after start")
        for w in workers:  # the generated exec probes pass on running pods
            assert pods.exec_probe(w, "readinessProbe") and pods.exec_probe(w, "livenessProbe"), w["metadata"]["name"]
        assert pods.exec_probe(master, "livenessProbe")
        assert not answers(url, "wrong-key")
        assert answers(url, key)
        check_master_with_key(url, key)
        # the worker behind TLS answers only through the tunnel: plain RPC to its pod gets nothing
        assert hello(pods.ip("rpc-cpu0-box"), 50053, timeout_s=3).state != "ok"
        assert hello(pods.ip("rpc-cpu0-box"), 50054, timeout_s=3).state == "refused"  # the worker: loopback only
        # status and bench against the Service address, with the generated key
        st = json.loads(run_cli("status", "--json", cwd=proj).stdout)
        assert st["master"]["healthy"] and st["master"]["model"] == "smollm2", st
        b = run_cli("bench", "--runs", "1", "--max-tokens", "32", "--json", cwd=proj)
        assert b.returncode == 0, b.stderr
        assert json.loads(b.stdout)["runs"][0]["completion_tokens"] == 32 and key not in b.stdout + b.stderr
        # a worker pod restarts (its container: the kubelet's restart): the supervisor restarts llama-server
        box = pods.pods["rpc-cpu0-box"].containers[0]
        before = time.monotonic()
        assert docker("restart", "-t", "1", box).returncode == 0
        back = wait_until(lambda: answers(url, key), 120, "answering after the worker restart", pods)
        print(f"pods: worker restarted -> answering again after {time.monotonic() - before:.1f} s ({back:.1f} s)")
        assert back <= 60
        master_log = docker("logs", pods.pods["llama-server"].containers[0]).stderr
        assert "hydra-supervise" in master_log and master_log.count("llama-server started (pid") >= 2
    finally:
        pods.close()
    assert hydra_containers() == []


def _up(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=3)
        return True
    except httpx.HTTPError:
        return False


def check_master_with_key(url: str, key: str) -> None:
    from openai import OpenAI

    reply = OpenAI(base_url=f"{url}/v1", api_key=key).chat.completions.create(
        model="smollm2", max_tokens=24, temperature=0, messages=ASK["messages"])
    assert "paris" in (reply.choices[0].message.content or "").lower()
