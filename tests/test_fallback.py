"""Fallback plans (issue 17): one per worker host the plan uses, planned on what is left; a smaller
context where the chosen one no longer fits; the reason where nothing fits; written as data for the
supervisor (one argument per line), shown by plan and generate, and removed when no longer planned.
The supervisor acting on them runs for real in tests/test_failover_docker.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import invoke, run_cli
from support.synthetic import ModelShape, write_gguf

from hydra_compose.inventory.config import ClusterConfig
from hydra_compose.modelfacts.gguf_facts import read_model
from hydra_compose.planner.fallback import fallback_plans
from hydra_compose.planner.plan import PlanOptions, make_plan

SHAPE = ModelShape("fb", n_layer=8, n_embd=512, n_head=8, n_head_kv=2, n_ff=1408, n_vocab=4096)


def cluster(a_gb: float, b_gb: float, c_gb: float = 2.0) -> dict:
    return {"master": {"host": "m", "cache_ram_gb": 0}, "hosts": [
        {"name": "m", "address": "10.0.0.1", "ram_gb": 16, "devices": []},
        {"name": "a", "address": "10.0.0.2", "devices": [{"vendor": "cpu", "memory_gb": a_gb, "threads": 4}]},
        {"name": "b", "address": "10.0.0.3", "devices": [{"vendor": "cpu", "memory_gb": b_gb, "threads": 4}]},
        {"name": "c", "address": "10.0.0.4", "devices": [{"vendor": "cpu", "memory_gb": c_gb, "threads": 4}]}]}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("fb") / "fb.gguf", SHAPE)


def plans(raw: dict, model: Path, **opts: object):  # noqa: ANN201
    cfg = ClusterConfig.model_validate(raw)
    o = PlanOptions(split="all", speculative="off", **opts)
    plan = make_plan(cfg, read_model(model), o)
    return plan, {f.without: f for f in fallback_plans(cfg, plan, o)}


def test_one_fallback_per_used_host_without_it(model):
    plan, fbs = plans(cluster(2, 2), model, ctx=4096)
    assert set(fbs) == {"a", "b", "c"}
    for name, fb in fbs.items():
        assert fb.plan is not None and not fb.ctx_reduced and fb.plan.ctx == 4096
        assert name not in {d.slot.host for d in fb.plan.devices}
        assert len(fb.plan.rpc_endpoints) == 2
    assert fbs["a"].describe().startswith("without a (ctx 4096, predicted ")


def test_fallbacks_dial_the_tunnels_of_the_hosts_left(model):
    # TLS tunnels are numbered over the hosts with workers: planned without host a, host b would be
    # the first tunnel (127.0.1.1, which is a's); a fallback must dial what the master really has
    from hydra_compose.inventory.topology import rpc_workers

    raw = cluster(2, 2)
    plan, fbs = plans(raw, model, ctx=4096)
    tunnel = {w.host: w.endpoint for w in rpc_workers(ClusterConfig.model_validate(raw))}
    assert tunnel == {"a": "127.0.1.1:50052", "b": "127.0.1.2:50052", "c": "127.0.1.3:50052"}
    for lost, fb in fbs.items():
        assert fb.plan.rpc_endpoints == [tunnel[h] for h in "abc" if h != lost], lost
        assert all(d.slot.id.endswith(f"[{tunnel[d.slot.host]}]") for d in fb.plan.devices)


def test_smaller_context_where_the_chosen_one_no_longer_fits(model):
    # 27 MiB of weights on three 51 MiB workers: 4096 tokens fit on three, not on two
    full, fbs = plans(cluster(0.05, 0.05, 0.05), model, ctx=4096)
    fb = fbs["a"]
    assert full.ctx == 4096 and fb.plan is not None and fb.ctx_reduced and 256 <= fb.plan.ctx < full.ctx
    assert all(d.total_bytes <= d.slot.budget_bytes for d in fb.plan.devices)


def test_nothing_fits_without_the_big_host(model):
    # 27 MiB of weights; two 31 MiB workers cannot hold it with their compute buffers
    plan, fbs = plans(cluster(0.03, 4, 0.03), model, ctx=512)
    assert fbs["b"].plan is None and fbs["b"].reason
    assert fbs["b"].describe().startswith("without b: no plan fits (")


def test_a_host_with_two_workers_also_loses_one_at_a_time(model):
    raw = cluster(2, 2)
    raw["hosts"][3]["devices"].append({"vendor": "cpu", "memory_gb": 2, "threads": 4})
    plan, _ = plans(raw, model, ctx=4096)
    cfg = ClusterConfig.model_validate(raw)
    fbs = fallback_plans(cfg, plan, PlanOptions(split="all", speculative="off", ctx=4096))
    assert [(f.without, f.worker) for f in fbs] == [("a", None), ("b", None), ("c", None), ("c", "rpc-cpu0"),
                                                   ("c", "rpc-cpu1")]
    one = fbs[3]
    # the host's other worker keeps its port, so its endpoint (and llama.cpp's device name) stays the
    # same (the master dials each LAN host through its TLS tunnel, 127.0.1.k)
    assert one.plan.rpc_endpoints == ["127.0.1.1:50052", "127.0.1.2:50052", "127.0.1.3:50053"]
    assert one.describe().startswith("without c rpc-cpu0 (ctx 4096") and one.file_stem == "c-rpc-cpu0"


def test_written_as_data_shown_and_swept(tmp_path, model, runner):
    raw = cluster(2, 2)
    for h in raw["hosts"]:
        h.setdefault("devices", [])
    raw["hosts"][1]["name"] = "a-box"
    raw["models"] = {"fb": {"file": "fb.gguf", "ctx": 4096, "split": "all", "default": True}}
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "fb.gguf").hardlink_to(model)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    r = invoke(runner, "generate", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    folder = tmp_path / "compose" / "m" / "fallback"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 3 and {f.split("-", 1)[1] for f in files} == {"a-box.args", "b.args", "c.args"}
    lines = (folder / files[0]).read_text().splitlines()
    assert lines[0].startswith("# without ") and lines[1:3] == ["-m", "/models/fb.gguf"]
    assert "--rpc" in lines and "\n" not in "".join(lines)
    compose = yaml.safe_load((tmp_path / "compose" / "m" / "docker-compose.yml").read_text())
    server = compose["services"]["llama-server"]
    assert "./fallback:/hydra/fallback:ro" in server["volumes"]
    assert server["environment"]["HYDRA_FAILOVER_S"] == "30"
    assert "fallback without a-box (ctx 4096" in r.output
    shown = json.loads(invoke(runner, "plan", "--json", cwd=tmp_path).output)
    assert [fb["without"] for fb in shown["fallbacks"]] == ["a-box", "b", "c"]
    assert all(fb["fits"] and fb["ctx"] == 4096 for fb in shown["fallbacks"])
    assert "if this is lost" in invoke(runner, "plan", cwd=tmp_path).output
    # host c leaves the inventory: its fallback file goes, nothing else of the user's does
    raw["hosts"].pop()
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (folder / "notes.txt").write_text("mine")
    assert invoke(runner, "generate", cwd=tmp_path).exit_code == 0
    left = sorted(p.name for p in folder.iterdir())
    assert len(left) == 3 and "notes.txt" in left and not any(n.endswith("-c.args") for n in left)


def test_failover_settings_are_bounded(tmp_path):
    raw = cluster(2, 2)
    raw["master"]["failover_s"] = 0
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(raw))
    r = run_cli("plan", cwd=tmp_path)  # the one-line error is the CLI's outer handler: a process boundary
    assert r.returncode == 1 and "master.failover_s" in r.stderr and "Traceback" not in r.stderr
