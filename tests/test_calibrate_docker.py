"""calibrate on the real Docker CPU cluster: every device and link measured from the master through
the workers' RPC ports, written into cluster.yaml, used by plan; the master serves again afterwards;
a host that cannot be reached is one line while the others are still measured."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

from conftest import run_cli
from test_e2e_docker import SOURCE, cpu_project, hydra_containers  # noqa: F401 - fixture

pytestmark = pytest.mark.docker
ENV = {"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)}


def test_calibrate_measures_records_and_plan_uses_it(cpu_project):  # noqa: F811
    proj = cpu_project
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    # a native worker host whose service is not running: its line fails, the local host is measured
    cfg["hosts"].append({"name": "gone", "address": "127.0.0.3", "runtime": "native",
                         "devices": [{"vendor": "cpu", "memory_gb": 1, "rpc_port": 50099}]})
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert run_cli("generate", cwd=proj, env=ENV).returncode == 0
    try:
        up = run_cli("up", cwd=proj, env=ENV)
        assert up.returncode == 1 and "127.0.0.3:50099" in up.stderr  # up waits for every worker: gone is gone
        cfg["hosts"].pop()
        (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        assert run_cli("generate", cwd=proj, env=ENV).returncode == 0
        assert run_cli("up", cwd=proj, env=ENV).returncode == 0
        cfg["hosts"].append({"name": "gone", "address": "127.0.0.3", "runtime": "native",
                             "devices": [{"vendor": "cpu", "memory_gb": 1, "rpc_port": 50099}]})
        (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        r = run_cli("calibrate", "--json", cwd=proj, env=ENV)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        data = json.loads(r.stdout)
        links = {link["host"]: link for link in data["links"]}
        assert links["gone"]["measured"] is None and "127.0.0.3:50099" in links["gone"]["error"]
        local = links["local"]["measured"]
        assert 0 < local["rtt_ms"] < 5 and local["up_gbps"] > 0.1 and local["rpc_ms"] >= 0.3
        assert [d["measured"]["decode_gbs"] > 1 for d in data["devices"]] == [True, True]
        written = yaml.safe_load((proj / "cluster.yaml").read_text())
        assert written["hosts"][0]["measured"]["ref"] == "b11434"
        assert all("measured" in d for d in written["hosts"][0]["devices"])
        # the master was stopped for the measurement and serves again
        assert httpx.get("http://127.0.0.1:8080/health", timeout=10).status_code == 200
        written["hosts"].pop()  # plan uses the measured figures
        (proj / "cluster.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
        plan = json.loads(run_cli("plan", "--json", cwd=proj).stdout)
        assert {d["speed"]["device"] for d in plan["devices"]} == {"measured"}
        assert {d["speed"]["link"] for d in plan["devices"]} == {"measured"}
    finally:
        run_cli("down", "-v", cwd=proj, env=ENV)
    assert hydra_containers() == []
