"""The speed model (issue 14): measured figures over tables, the ranking of placements, speculative
decoding in the plan (draft placement and memory, modes, auto), plan --compare, the calibration
arithmetic and the RPC link probe against a real worker."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import invoke, run_cli
from support.accuracy import cluster_for, tolerance
from support.llama_log import parse_server_log
from support.localrun import free_port, loopback_cluster, wait_port
from support.sparse import qwen3_vl_30b_a3b
from support.synthetic import ModelShape, write_gguf

from hydra_compose.errors import PlanError
from hydra_compose.inventory.config import ClusterConfig
from hydra_compose.modelfacts.gguf_facts import read_model
from hydra_compose.planner.plan import PlanOptions, make_plan
from hydra_compose.runtime.calibration import fit_device, read_bytes
from hydra_compose.runtime.calibration_models import write_models
from hydra_compose.runtime.rpc_link import measure_link

TARGET = ModelShape("t", n_layer=12, n_embd=512, n_head=8, n_head_kv=2, n_ff=1408, n_vocab=4096)
DRAFT = ModelShape("d", n_layer=1, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_vocab=4096)
TODAY = {"date": "2026-12-01", "ref": "b11434"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("speed-models")
    out = {"target": write_gguf(d / "target.gguf", TARGET), "draft": write_gguf(d / "draft.gguf", DRAFT)}
    out["seed004"] = qwen3_vl_30b_a3b(d / "qwen3-vl.gguf")
    return out


def gpu_cluster(rtt_ms: float | None = None, local_gpu: bool = True) -> ClusterConfig:
    """A master with an RTX 4090 and two RTX 3090 hosts; optionally calibrated links."""
    link = {"measured": {"rtt_ms": rtt_ms, "up_gbps": 1, "down_gbps": 1, "rpc_ms": 0.3, **TODAY}} if rtt_ms else {}
    master_devices = [{"vendor": "nvidia", "name": "RTX 4090", "arch": "sm_89", "vram_gb": 24}] if local_gpu else []
    return ClusterConfig.model_validate({"master": {"host": "m", "cache_ram_gb": 0}, "hosts": [
        {"name": "m", "address": "10.0.0.1", "ram_gb": 64, "devices": master_devices},
        {"name": "a", "address": "10.0.0.2", **link, "devices": [{"vendor": "nvidia", "arch": "sm_86", "vram_gb": 24}]},
        {"name": "b", "address": "10.0.0.3", **link, "devices": [{"vendor": "nvidia", "arch": "sm_86", "vram_gb": 24}]}]})


# --- measured figures over tables ----------------------------------------------------------------
def test_measured_figures_replace_the_tables(models):
    cfg = gpu_cluster(rtt_ms=2.0)
    facts = read_model(models["target"])
    plan = make_plan(cfg, facts, PlanOptions(ctx=2048, split="all", speculative="off"))
    rpc = [d for d in plan.devices if d.slot.kind == "rpc"]
    assert all(d.slot.hop_measured for d in rpc) and not any(d.slot.speed.measured for d in rpc)
    # each hop pays the measured round trip (2 ms) + stack (0.3 ms) + the activations over 1 Gbit/s
    assert all(d.slot.hop_s == pytest.approx(2.3e-3 + 2 * 512 * 4 * 8 / 1e9, rel=0.01) for d in rpc)
    slow = make_plan(gpu_cluster(rtt_ms=20.0), facts, PlanOptions(ctx=2048, split="all", speculative="off"))
    assert slow.predicted_tg_tokens_per_s < plan.predicted_tg_tokens_per_s / 3


def test_plan_says_which_figures_are_measured(tmp_path, models):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "t.gguf").write_bytes(models["target"].read_bytes())
    cfg = {"master": {"host": "m"}, "hosts": [{"name": "m", "address": "127.0.0.1", "devices": [
        {"vendor": "cpu", "memory_gb": 2, "threads": 2, "measured": {"decode_gbs": 30, "expert_gbs": 20, **TODAY}},
        {"vendor": "cpu", "memory_gb": 2, "threads": 1}]}], "models": {"t": {"file": "t.gguf", "ctx": 1024,
                                                                           "split": "all"}}}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    plan = json.loads(run_cli("plan", "--json", cwd=tmp_path).stdout)
    assert [d["speed"]["device"] for d in plan["devices"]] == ["measured", "table"]
    assert plan["devices"][0]["speed"]["decode_gbs"] == 30
    text = run_cli("plan", cwd=tmp_path).stdout
    assert "30 measured" in text and "20 table" in text


def test_seed004_never_leaves_the_faster_card_idle(models):
    """Seed 004: the master's RTX 4070 beside an MI50 over 1 Gbit. The model does not fit the 4070; it
    fits the MI50 alone. The 4070 is faster per byte in llama.cpp (MI50's gfx906 kernels reach a
    quarter of its bandwidth), so the split must use it to the full."""
    cfg = ClusterConfig.model_validate({"master": {"host": "nv"}, "hosts": [
        {"name": "nv", "address": "192.168.1.30", "ram_gb": 64,
         "devices": [{"vendor": "nvidia", "name": "RTX 4070", "arch": "sm_89", "vram_gb": 12, "index": 0}]},
        {"name": "mi50", "address": "192.168.1.31", "link_gbps": 1,
         "devices": [{"vendor": "amd", "name": "Instinct MI50", "arch": "gfx906", "vram_gb": 32, "index": 0}]}]})
    facts = read_model(models["seed004"])
    plan = make_plan(cfg, facts, PlanOptions(ctx=32768, speculative="off"))
    cuda = next(d for d in plan.devices if d.slot.id == "CUDA0")
    assert cuda.layers is not None and cuda.total_bytes > 0.8 * cuda.slot.budget_bytes
    # measured otherwise (an MI50 twice as fast as the 4070): the MI50 takes everything, the ranking follows
    raw = cfg.model_dump()
    for host, rate in zip(raw["hosts"], (200, 400)):
        host["devices"][0]["measured"] = {"decode_gbs": rate, "expert_gbs": rate, **TODAY}
    measured = ClusterConfig.model_validate(raw)
    fast_mi50 = make_plan(measured, facts, PlanOptions(ctx=32768, speculative="off"))
    assert fast_mi50.tensor_split[0] > plan.tensor_split[0]


# --- speculative decoding in the plan --------------------------------------------------------------
def test_draft_is_placed_fitted_and_emitted(models):
    cfg = gpu_cluster(rtt_ms=4.0)
    plan = make_plan(cfg, read_model(models["target"]), PlanOptions(ctx=4096, split="all", speculative="draft"),
                     draft=read_model(models["draft"]))
    sp = plan.speculation
    assert sp is not None and sp.mode == "draft" and sp.where == "CUDA0"  # the master's own GPU
    cuda = next(d for d in plan.devices if d.slot.id == "CUDA0")
    assert cuda.draft_bytes > 0 and cuda.total_bytes <= cuda.slot.budget_bytes
    args = plan.llama_server_args()
    assert args[args.index("--spec-type") + 1] == "draft-simple" and args[args.index("--spec-draft-device") + 1] == "CUDA0"
    assert plan.predicted_tg_tokens_per_s > plan.predicted_without_speculation


def test_auto_speculates_only_where_it_pays(models):
    target, draft = read_model(models["target"]), read_model(models["draft"])
    far = make_plan(gpu_cluster(rtt_ms=4.0), target, PlanOptions(ctx=2048, split="all"), draft=draft)
    assert far.speculation is not None  # GPUs over a slow link: the network dominates
    cpus = ClusterConfig.model_validate({"master": {"host": "m", "cache_ram_gb": 0}, "hosts": [
        {"name": "m", "address": "127.0.0.1", "devices": [{"vendor": "cpu", "memory_gb": 2, "threads": 1}]}]})
    local = make_plan(cpus, target, PlanOptions(ctx=2048), draft=draft)
    assert local.speculation is None  # CPU verification costs per token: no gain predicted
    assert make_plan(gpu_cluster(), target, PlanOptions(ctx=2048)).speculation is None  # no draft, no MTP heads


def test_draft_without_room_on_the_gpus_runs_on_the_master_cpu(models):
    cfg = gpu_cluster(rtt_ms=4.0, local_gpu=False)
    plan = make_plan(cfg, read_model(models["target"]), PlanOptions(ctx=2048, split="all", speculative="draft"),
                     draft=read_model(models["draft"]))
    assert plan.speculation.where in ("host", "RPC0[10.0.0.2:50052]", "RPC0[10.0.0.3:50052]")
    if plan.speculation.where == "host":
        assert "-ngld" in plan.llama_server_args() and plan.host.draft_bytes > 0


def test_draft_of_another_tokenizer_is_refused(tmp_path, models):
    other = write_gguf(tmp_path / "other.gguf", ModelShape("o", n_layer=1, n_embd=128, n_head=4, n_head_kv=2,
                                                           n_ff=256, n_vocab=6144))
    with pytest.raises(PlanError, match="does not share .*tokenizer.*vocabulary 6144 vs 4096"):
        make_plan(gpu_cluster(4.0), read_model(models["target"]), PlanOptions(ctx=2048, speculative="draft"),
                  draft=read_model(other))


@pytest.mark.parametrize("opts, expected", [
    (PlanOptions(ctx=2048, speculative="mtp"), "no multi-token-prediction heads"),
    (PlanOptions(ctx=2048, speculative="draft"), "no draft: model is named"),
    (PlanOptions(ctx=2048, speculative="draft", draft_max=3, acceptance=5.0), None),
])
def test_explicit_modes_say_why_not(models, opts, expected):
    draft = read_model(models["draft"]) if expected is None else None
    with pytest.raises(PlanError, match=expected or "acceptance 5 is outside 1..4"):
        make_plan(gpu_cluster(4.0), read_model(models["target"]), opts, draft=draft)


def test_ngram_mode_on_request(models):
    plan = make_plan(gpu_cluster(4.0), read_model(models["target"]), PlanOptions(ctx=2048, speculative="ngram"))
    assert plan.llama_server_args()[-4:] == ["--spec-type", "ngram-mod", "--spec-draft-n-max", "3"]


def test_generate_mounts_the_draft_and_compare_lists_candidates(tmp_path, models):
    (tmp_path / "models").mkdir()
    for name in ("target", "draft"):
        (tmp_path / "models" / f"{name}.gguf").write_bytes(models[name].read_bytes())
    cfg = {"master": {"host": "m"}, "hosts": [
        {"name": "m", "address": "10.0.0.1", "devices": [{"vendor": "nvidia", "arch": "sm_89", "vram_gb": 24}]},
        {"name": "a", "address": "10.0.0.2", "measured": {"rtt_ms": 4, "up_gbps": 1, "down_gbps": 1, **TODAY},
         "devices": [{"vendor": "nvidia", "arch": "sm_86", "vram_gb": 24}]}],
        "models": {"t": {"file": "target.gguf", "draft": "draft.gguf", "ctx": 2048, "split": "all"}}}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli("generate", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    command = yaml.safe_load((tmp_path / "compose" / "m" / "docker-compose.yml").read_text())[
        "services"]["llama-server"]["command"]
    assert command[command.index("-md") + 1] == "/models/draft.gguf"
    table = json.loads(run_cli("plan", "--compare", "--json", cwd=tmp_path).stdout)
    labels = [c["label"] for c in table["candidates"]]
    assert "split: all (every device)" in labels and any(label.startswith("speculative draft") for label in labels)
    # split: all pools both GPUs; the master's own 4090 alone would be faster, and --compare says so
    assert table["candidates"][0]["label"] == "split: speed, no speculation"
    assert "split: speed, no speculation is predicted" in table["why"] and "follows cluster.yaml" in table["why"]
    speeds = [c["predicted_tg_tokens_per_s"] for c in table["candidates"]]
    assert speeds == sorted(speeds, reverse=True)


# --- calibration arithmetic and the link probe -----------------------------------------------------
def test_fit_recovers_rates_from_timings(tmp_path):
    models = write_models(tmp_path)
    facts = {n: read_model(p) for n, p in models.items()}
    rate, expert_rate, stack, rtt = 25e9, 10e9, 0.8e-3, 0.1e-3
    from hydra_compose.planner.speed import MASTER_TOKEN_S

    def row(seconds: float) -> list[dict]:
        return [{"avg_ts": 1 / seconds}]

    times = []
    for name in ("dense-small", "dense-large", "moe"):
        dense, experts = read_bytes(facts[name])
        times.append(row(MASTER_TOKEN_S + rtt + stack + dense / rate + experts / expert_rate))
    fit = fit_device([*times, [{"avg_ts": 900.0}]], facts, rtt)
    assert fit.decode_gbs == pytest.approx(25, rel=1e-6) and fit.expert_gbs == pytest.approx(10, rel=1e-6)
    assert fit.stack_ms == pytest.approx(0.8, rel=1e-6) and fit.prompt_tps == 900


def test_link_probe_against_a_real_worker(native_bin):
    port = free_port()
    proc = subprocess.Popen(["sh", "-c", 'trap "" PIPE; exec "$0" -p "$1" -t 1', str(native_bin / "ggml-rpc-server"),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port("127.0.0.1", port)
        time.sleep(0.3)
        first, second = measure_link("127.0.0.1", port), measure_link("127.0.0.1", port)
        for f in (first, second):  # the buffer it allocates is freed: twice works
            assert 0 < f.rtt_s < 0.01 and f.up_bytes_s > 50e6 and f.down_bytes_s > 50e6 and f.devices == 1
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_draft_memory_matches_llama_server_and_bench_reports_acceptance(native_bin, models, runner, tmp_path):
    """The draft model's planned bytes against llama-server's own buffers (the plan-accuracy bound),
    and `bench` reporting the server's draft acceptance."""
    target, draft = read_model(models["target"]), read_model(models["draft"])
    with loopback_cluster(native_bin, tmp_path / "run") as cluster:
        for _ in range(2):
            cluster.start_worker(threads=1)
        plan = make_plan(cluster_for(cluster.endpoints, 0.5), target,
                         PlanOptions(ctx=2048, parallel=2, split="all", speculative="draft"), draft=draft)
        spec = plan.speculation
        assert spec is not None
        on_device = {d.slot.id: d.draft_bytes for d in plan.devices if d.draft_bytes}
        url = cluster.start_server(models["target"], [*plan.llama_server_args(), "-md", str(models["draft"]),
                                                      "--verbosity", "99", "-t", "1"])
        r = invoke(runner, "bench", "--url", url, "--runs", "1", "--max-tokens", "48", "--json", cwd=tmp_path)
        assert r.exit_code == 0, r.output
        drafted = json.loads(r.stdout)["summary"]["draft"]
        assert drafted["drafted"] > 0 and 0 <= drafted["accepted"] <= drafted["drafted"]
        assert drafted["acceptance_length"] >= 1
        text = cluster.stop_server()
    # everything llama-server allocates after it opens the draft model is the draft's
    log = parse_server_log(text[text.index(f"from {models['draft']}"):])
    planned = {"host": plan.host.draft_bytes, **on_device}
    measured = {"host": log.host.total_bytes, **{k: v.total_bytes for k, v in log.devices.items()}}
    assert set(measured) == set(planned) and planned["host"] > 0
    print("draft bytes planned / llama-server:", planned, measured)
    for where, size in planned.items():
        assert abs(measured[where] - size) <= tolerance(size), (where, measured, planned)
