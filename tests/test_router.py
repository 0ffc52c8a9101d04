"""serve: several models behind one llama-server router. The planner gives every model workers of its
own where they hold it (all loaded together) or plans each on the whole cluster (switched, one at a
time); generate writes the models preset and the router's command on both targets. The router on
a real Docker cluster: tests/test_router_docker.py."""

from __future__ import annotations

import configparser
import json

import pytest
import yaml

from conftest import run_cli
from support.synthetic import TEST_SHAPES, write_gguf
from test_generate import example_project

from hydra_compose.errors import RenderError
from hydra_compose.inventory.config import ClusterConfig
from hydra_compose.modelfacts.gguf_facts import read_model
from hydra_compose.planner.plan import PlanOptions
from hydra_compose.planner.router import RESIDENT_MIN_CTX, ModelRequest, plan_router
from hydra_compose.render.server_args import Routing, ServedModel, render_preset

MiB = 1024 * 1024


def cluster(worker_gb: float, n: int = 3, ram_gb: float = 64) -> ClusterConfig:
    return ClusterConfig.model_validate({
        "master": {"host": "m", "cache_ram_gb": 0.25},
        "hosts": [{"name": "m", "address": "10.0.0.1", "ram_gb": ram_gb, "devices": []},
                  {"name": "w", "address": "10.0.0.2", "devices": [
                      {"vendor": "cpu", "memory_gb": worker_gb, "threads": 4} for _ in range(n)]}]})


@pytest.fixture(scope="module")
def requests(tmp_path_factory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("router")
    big, small = TEST_SHAPES[2], TEST_SHAPES[1]
    return [ModelRequest("big", read_model(write_gguf(d / "big.gguf", big)), PlanOptions(ctx=4096)),
            ModelRequest("small", read_model(write_gguf(d / "small.gguf", small)), PlanOptions(ctx=4096))]


def test_models_get_workers_of_their_own_where_they_fit(requests):
    cfg = cluster(1)
    router = plan_router(cfg, requests)
    assert router.resident and router.models_max == 2 and router.why_switching is None
    used = [set(m.plan.rpc_endpoints) for m in router.models]
    assert used[0] and used[1] and not used[0] & used[1]
    for m in router.models:  # each model's memory counted on its own devices, within their budgets
        assert m.plan.ctx == 4096
        assert all(d.total_bytes <= d.slot.budget_bytes for d in m.plan.devices)
    assert router.rpc_endpoints == [e for m in router.models for e in m.plan.rpc_endpoints]


def test_models_that_do_not_fit_apart_share_the_cluster_and_switch(requests):
    router = plan_router(cluster(0.06), requests)  # 61 MiB workers: big needs two, small then has no room
    assert not router.resident and router.models_max == 1
    assert router.why_switching == "small does not fit on the workers the larger models leave"
    assert all(len(m.plan.rpc_endpoints) == 3 for m in router.models)  # each on the whole cluster
    assert all(m.plan.ctx == 4096 for m in router.models)


def test_an_open_context_needs_a_usable_one_to_get_workers_of_its_own(requests, monkeypatch):
    # ctx unset: apart, the small model would get a worker of its own only at a small context;
    # the router rather switches between them on the whole cluster, each at the full context
    import hydra_compose.planner.router as router_module

    open_ctx = [ModelRequest(r.name, r.facts, PlanOptions()) for r in requests]
    router = plan_router(cluster(0.06), open_ctx)
    assert not router.resident and [m.plan.ctx for m in router.models] == [4096, 4096]
    assert RESIDENT_MIN_CTX == 4096
    monkeypatch.setattr(router_module, "RESIDENT_MIN_CTX", 256)
    squeezed = plan_router(cluster(0.06), open_ctx)
    assert squeezed.resident and min(m.plan.ctx for m in squeezed.models) < 4096


def test_the_masters_ram_bounds_models_loaded_together(requests):
    # every model keeps its prompt cache and embeddings in the master's RAM: 2.25 GiB for the host
    # after its reserve holds one model's 0.25 GiB cache, the sum of several is checked
    router = plan_router(cluster(1, ram_gb=2.4), requests)
    assert not router.resident and "RAM" in router.why_switching


def test_preset_values_that_would_end_an_ini_line_are_refused(requests):
    router = plan_router(cluster(1), requests)
    served = (ServedModel("big", "big;x.gguf"), ServedModel("small", "small.gguf"))
    with pytest.raises(RenderError, match="models preset"):
        render_preset(Routing(router, served))


def lab(tmp_path):  # noqa: ANN001, ANN201
    return example_project(tmp_path, "router-lab")


def test_generate_writes_the_preset_and_a_router_without_workers_of_its_own(tmp_path):
    proj = lab(tmp_path)
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    assert "router: every model on workers of its own, all 3 loaded together" in r.stdout
    ini = configparser.ConfigParser(comment_prefixes=(";",))
    ini.read_string((proj / "compose/gateway/models.ini").read_text().replace("version = 1\n", "", 1))
    assert ini.sections() == ["mistral-7b", "qwen3-8b", "llama3-8b"]
    svc = yaml.safe_load((proj / "compose/gateway/docker-compose.yml").read_text())["services"]["llama-server"]
    command = svc["command"]
    assert command[:4] == ["--models-preset", "/hydra/models.ini", "--models-max", "3"]
    assert "--rpc" not in command and "-m" not in command  # the router itself must not hold a worker
    workers = svc["environment"]["HYDRA_RPC_WORKERS"].split(",")
    rpc = [ini[s]["rpc"] for s in ini.sections()]
    assert sorted(rpc) == sorted(workers) and len(set(rpc)) == 3  # one worker each, all awaited
    assert all(ini[s]["load-on-startup"] == "true" for s in ini.sections())
    assert "./models.ini:/hydra/models.ini:ro" in svc["volumes"]
    plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)
    assert plan["router"]["models_max"] == 3 and [m["tensor_split"] for m in plan["models"]]
    one = json.loads(run_cli("plan", "-m", "qwen3-8b", "--json", cwd=proj).stdout)
    assert "devices" in one  # -m: the one model on the whole cluster, as before
    assert not (proj / "compose/gateway/fallback").exists()


def test_kubernetes_master_pod_runs_the_router_on_pod_endpoints(tmp_path):
    proj = lab(tmp_path)
    r = run_cli("generate", "--target", "kubernetes", cwd=proj)
    assert r.returncode == 0, r.stderr
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((proj / "k8s/supervisor.yaml").read_text())}
    preset = docs["hydra-supervisor"]["data"]["models.ini"]
    deployment = next(yaml.safe_load_all((proj / "k8s/master.yaml").read_text()))
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert server["args"][:4] == ["--models-preset", "/hydra/models.ini", "--models-max", "3"]
    assert {"name": "supervisor", "mountPath": "/hydra/models.ini", "subPath": "models.ini",
            "readOnly": True} in server["volumeMounts"]
    for endpoint in env["HYDRA_RPC_WORKERS"].split(","):  # the workers' Services (or TLS tunnels), as in the preset
        assert f"rpc = {endpoint}" in preset
        assert ".svc:" in endpoint or endpoint.startswith("127.0.1.")


def test_serve_names_must_be_models(tmp_path):
    proj = lab(tmp_path)
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    for serve, message in ((["mistral-7b", "nope"], "serve names 'nope', which is not under models"),
                           (["qwen3-8b", "qwen3-8b"], "serve names a model twice"),
                           (["qwen3-8b"], "serve")):
        cfg["serve"] = serve
        (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        before = sorted(p.name for p in proj.rglob("*"))
        r = run_cli("generate", cwd=proj)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert sorted(p.name for p in proj.rglob("*")) == before  # nothing half-written


def test_swap_names_a_served_model(tmp_path):
    proj = lab(tmp_path)
    r = run_cli("swap", "nope", cwd=proj)
    assert r.returncode != 0 and "is not one the router serves" in r.stderr and "Traceback" not in r.stderr
