"""replicas: in cluster.yaml. The planner compares one llama-server on the whole cluster with one per
group of workers (single-stream and aggregate tok/s at the expected concurrency) and picks by goal;
generate writes a llama-server per replica on the master's loopback and HAProxy in front. Real
HAProxy checks its generated configuration here; the running cluster is tests/test_replicas_docker.py."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import REQUIRE_HEAVY, run_cli
from support.synthetic import TEST_SHAPES, write_gguf
from test_generate import example_project

from hydra_compose.errors import PlanError
from hydra_compose.inventory.config import ClusterConfig
from hydra_compose.modelfacts.gguf_facts import read_model
from hydra_compose.planner.plan import PlanOptions
from hydra_compose.planner.replicas import aggregate_tps, plan_replicas


def cluster(worker_gb: float, n: int = 2, gpu: bool = False) -> ClusterConfig:
    device = {"vendor": "nvidia", "vram_gb": worker_gb, "arch": "sm_86"} if gpu else \
        {"vendor": "cpu", "memory_gb": worker_gb, "threads": 4}
    return ClusterConfig.model_validate({
        "master": {"host": "m", "cache_ram_gb": 0},
        "hosts": [{"name": "m", "address": "10.0.0.1", "devices": []}] + [
            {"name": f"w{i}", "address": f"10.0.0.{i + 2}", "devices": [dict(device, index=0) if gpu else device]}
            for i in range(n)]})


@pytest.fixture(scope="module")
def model(tmp_path_factory):  # noqa: ANN201
    return read_model(write_gguf(tmp_path_factory.mktemp("rep") / "m.gguf", TEST_SHAPES[0]))


def test_throughput_takes_a_llama_server_per_worker_where_the_model_fits_on_one(model):
    rp = plan_replicas(cluster(1), model, PlanOptions(ctx=2048), "auto", "throughput", concurrency=8)
    counts = {c.replicas: c for c in rp.choices}
    assert set(counts) == {1, 2} and rp.chosen.replicas == 2
    one, two = counts[1], counts[2]
    assert two.aggregate_tps > one.aggregate_tps and two.single_tps <= one.single_tps * 1.0001
    endpoints = [set(p.rpc_endpoints) for p in two.plans]
    assert len(endpoints) == 2 and not endpoints[0] & endpoints[1]


def test_latency_keeps_one_server_where_replicas_would_slow_a_stream(model):
    # split: all pools both workers for one stream; a replica per worker would decode each stream on one
    opts = PlanOptions(ctx=2048, split="all")
    rp = plan_replicas(cluster(1), model, opts, "auto", "latency", concurrency=8)
    counts = {c.replicas: c for c in rp.choices}
    assert counts[2].single_tps > 0 and rp.chosen.replicas == (
        2 if counts[2].single_tps >= 0.98 * counts[1].single_tps else 1)
    thr = plan_replicas(cluster(1), model, opts, "auto", "throughput", concurrency=8)
    assert thr.chosen.aggregate_tps >= rp.chosen.aggregate_tps


def test_a_fixed_count_that_does_not_fit_is_a_plan_error(model):
    with pytest.raises(PlanError, match="replicas: 3 does not fit"):
        plan_replicas(cluster(1), model, PlanOptions(ctx=2048), 3, "latency", concurrency=4)
    tiny = cluster(0.035)  # each worker too small for the model alone: only one server over both
    rp = plan_replicas(tiny, model, PlanOptions(), "auto", "throughput", concurrency=8)
    assert rp.chosen.replicas == 1 and "2 groups" in next(c for c in rp.choices if c.replicas == 2).why_not


def test_batching_is_cheaper_on_gpus_than_on_cpus(model):
    opts = PlanOptions(ctx=4096, parallel=4)
    cpu = plan_replicas(cluster(1), model, opts, 1, "latency", 4).chosen.plans[0]
    gpu = plan_replicas(cluster(8, gpu=True), model, opts, 1, "latency", 4).chosen.plans[0]
    for plan, lo, hi in ((cpu, 0.99, 1.01), (gpu, 2.5, 4.0)):
        gain = aggregate_tps(plan, 4) / plan.predicted_tg_tokens_per_s
        assert lo < gain < hi, (plan.devices[0].slot.vendor, gain)
    assert aggregate_tps(cpu, 8) == aggregate_tps(cpu, 4)  # never more streams than slots at once


def test_generate_writes_replicas_behind_haproxy(tmp_path):
    proj = example_project(tmp_path, "replicas-lab")
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    assert "chosen replicas 2" in r.stdout and "behind HAProxy" in r.stdout
    services = yaml.safe_load((proj / "compose/gateway/docker-compose.yml").read_text())["services"]
    assert [s for s in services if s.startswith(("llama-server", "balancer"))] == [
        "llama-server", "llama-server-2", "balancer"]
    ports = []
    for name in ("llama-server", "llama-server-2"):
        cmd = services[name]["command"]
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1"  # only the balancer faces the network
        ports.append(cmd[cmd.index("--port") + 1])
        assert "LLAMA_API_KEY" in services[name]["environment"]  # every replica checks the key
    cfg = (proj / "compose/gateway/haproxy.cfg").read_text()
    assert "bind 10.0.6.1:8080" in cfg and "balance leastconn" in cfg
    assert [f"127.0.0.1:{p}" for p in ports] == [line.split()[2] for line in cfg.splitlines()
                                                  if line.strip().startswith("server ")]
    assert "LLAMA_API_KEY" not in cfg and not (proj / "compose/gateway/fallback").exists()
    balancer = services["balancer"]
    assert balancer["build"]["target"] == "balancer" and "./haproxy.cfg:/hydra/haproxy.cfg:ro" in balancer["volumes"]
    plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)
    assert plan["replicas"]["chosen"] == 2 and len(plan["devices"]) == 1  # one replica's plan, one GPU


def test_haproxy_accepts_the_generated_configuration(tmp_path):
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if haproxy is None:
        if REQUIRE_HEAVY:
            pytest.fail("haproxy missing: scripts/test.sh installs Debian's haproxy")
        pytest.skip("haproxy not installed")
    proj = example_project(tmp_path, "replicas-lab")
    assert run_cli("generate", cwd=proj).returncode == 0
    r = subprocess.run([haproxy, "-c", "-f", str(proj / "compose/gateway/haproxy.cfg")], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "Configuration file is valid" in r.stdout + r.stderr, r.stdout + r.stderr


def test_replicas_refused_where_they_cannot_run(tmp_path):
    proj = example_project(tmp_path, "replicas-lab")
    r = run_cli("generate", "--target", "kubernetes", cwd=proj)
    assert r.returncode != 0 and "replicas are written for the compose target only" in r.stderr
    assert "Traceback" not in r.stderr and not (proj / "k8s").exists()
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["models"]["other"] = {"file": "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf"}
    cfg["serve"] = "all"
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("plan", cwd=proj)
    assert r.returncode != 0 and "replicas are for one model served alone" in r.stderr and "Traceback" not in r.stderr
