"""A worker host lost for good, on the real Docker CPU stack with mutual TLS on its link: the
master's supervisor serves the fallback plan generate wrote (answering again within 60 s with the
default failover_s), `status` says it is degraded, the host's return brings the full plan back
after failback_s, and a model that does not fit without the host leaves the master unhealthy with
the reason instead of flapping. Throughout, the worker host answers RPC only through the master's
TLS tunnel. The second host is 127.0.0.2: another address of this machine, its own compose project."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest
import yaml

from test_e2e_docker import cpu_project, hydra_containers  # noqa: F401 - fixture
from conftest import run_cli
from test_lifecycle_docker import ENV, URL, hc, status
from test_rpc_tls import self_made_cert, tls_hello

from hydra_compose.runtime.rpc_hello import hello

pytestmark = pytest.mark.docker
ASK = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8}


def box_worker(proj, *args: str) -> None:
    f = proj / "compose" / "box" / "docker-compose.yml"
    subprocess.run(["docker", "compose", "-f", str(f), *args], check=True, capture_output=True, timeout=120)


def answers() -> bool:
    try:
        return httpx.post(f"{URL}/v1/chat/completions", json=ASK, timeout=20).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check, limit_s: float) -> float:  # noqa: ANN001
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if check():
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"not within {limit_s} s")


def n_ctx() -> int:
    return httpx.get(f"{URL}/props", timeout=10).json()["default_generation_settings"]["n_ctx"]


def compose_logs(proj) -> str:  # noqa: ANN001
    return "".join(subprocess.run(["docker", "compose", "-f", str(f), "logs"], capture_output=True, text=True).stdout
                   for f in (proj / "compose").glob("*/docker-compose.yml"))


def test_lost_host_fallback_and_failback(cpu_project, tmp_path):  # noqa: F811
    proj = cpu_project
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["cluster"]["rpc_tls"] = True
    cfg["hosts"] = [
        {"name": "local", "address": "127.0.0.1",
         "devices": [{"vendor": "cpu", "memory_gb": 1, "threads": 1, "rpc_port": 50052}]},
        {"name": "box", "address": "127.0.0.2",
         "devices": [{"vendor": "cpu", "memory_gb": 1, "threads": 1, "rpc_port": 50053}]}]
    cfg["master"]["failback_s"] = 10
    cfg["models"]["smollm2"].update(ctx=8192, parallel=1, split="all")
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = hc(proj, "generate").stdout
    assert "fallback without box (ctx 8192" in out, out
    assert (proj / "compose" / "local" / "fallback" / "01-box.args").is_file()
    try:
        hc(proj, "up")
        assert answers() and status(proj)["master"]["mode"] == "full"
        # the box's worker: busy serving the master through its tunnel; nobody else gets an RPC answer
        st = status(proj)
        assert [(w["endpoint"], w["protocol"]) for w in st["workers"]] == [
            ("127.0.0.1:50052", "busy"), ("127.0.0.2:50053", "busy")], st["workers"]
        assert hello("127.0.0.2", 50053, timeout_s=2).version is None
        assert tls_hello(50053) == b"" and tls_hello(50053, *self_made_cert(tmp_path)) == b""
        keys = [proj / "pki" / "ca.key", *proj.glob("compose/*/tls/host.key")]
        assert len(keys) == 3 and all(p.stat().st_mode & 0o777 == 0o600 for p in keys)
        secrets = [p.read_text().split("-----")[2].strip() for p in keys]
        texts = [f.read_text() for f in (proj / "compose").glob("*/docker-compose.yml")] + [compose_logs(proj)]
        assert not any(secret in text for secret in secrets for text in texts)
        # calibrate measures the box through its tunnel, like llama-server reaches it
        r = run_cli("calibrate", "--json", cwd=proj, env=ENV)
        assert r.returncode == 0, r.stderr
        links = {link["host"]: link["measured"] for link in json.loads(r.stdout)["links"]}
        assert links["box"]["rtt_ms"] < 5 and links["box"]["up_gbps"] > 0.1, links
        assert answers()

        # the box is switched off for good: the fallback plan serves within 60 s (failover_s 30)
        lost = time.monotonic()
        box_worker(proj, "stop")
        wait_until(answers, 90)
        took = time.monotonic() - lost
        print(f"host lost for good -> answering on the fallback plan after {took:.1f} s")
        assert took <= 60
        # Docker's health status follows within one healthcheck interval (5 s)
        wait_until(lambda: status(proj)["master"]["healthy"], 15)
        st = status(proj)
        assert st["master"]["mode"].startswith("degraded: without box (ctx 8192"), st["master"]
        assert any(w.startswith("master degraded: without box") for w in st["warnings"]), st["warnings"]

        # the box comes back: the full plan again after failback_s (10 s) with no slot busy
        back = time.monotonic()
        box_worker(proj, "start")
        wait_until(lambda: status(proj)["master"]["mode"] == "full" and answers(), 10 + 60)
        print(f"host back -> full plan answering after {time.monotonic() - back:.1f} s")
        # both workers serve again: llama-server has a connection to each
        assert all(w["protocol"] == "busy" for w in status(proj)["workers"]), status(proj)["workers"]

        # a model that does not fit without the box: unhealthy with the reason, no restart loop
        cfg["hosts"][0]["devices"][0]["memory_gb"] = 0.07
        cfg["master"]["failover_s"] = 5
        (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        out = hc(proj, "generate").stdout
        assert "fallback without box: no plan fits" in out, out
        hc(proj, "up", "--no-build")
        assert answers()
        box_worker(proj, "stop")
        # the master dials the box through its TLS tunnel, 127.0.1.1
        wait_until(lambda: (status(proj)["master"]["mode"] or "").startswith("down: workers 127.0.1.1:50053"), 60)
        st = status(proj)
        assert not st["master"]["healthy"] and "no plan fits" in st["master"]["mode"]
        logs = subprocess.run(["docker", "compose", "-f", str(proj / "compose" / "local" / "docker-compose.yml"),
                               "logs", "llama-server"], capture_output=True, text=True).stdout
        started = logs.count("llama-server started")
        time.sleep(10)  # no flapping: llama-server is not started again while the box is away
        logs = subprocess.run(["docker", "compose", "-f", str(proj / "compose" / "local" / "docker-compose.yml"),
                               "logs", "llama-server"], capture_output=True, text=True).stdout
        assert logs.count("llama-server started") == started
    finally:
        run_cli("down", "-v", cwd=proj, env=ENV)
    assert hydra_containers() == []
