"""Speculative decoding across an RPC cluster (issue 14): decode tok/s with and without a draft
model, in one run, over links with added round-trip time, the acceptance fixed with llama-server's
--spec-synth-len (benchmarking only: the output is not valid), next to the planner's prediction
and what `speculative: auto` would choose. Three CPU workers (-t 1) behind delay proxies serve a
small target, so that the network, not the CPUs, dominates a token — the regime of a GPU cluster;
the draft runs on the master's CPU where the plan puts it.

Target: at least 1.5x at acceptance length 3 over 1 ms and 4 ms RTT links; auto never enables a mode
that measures more than 2 % slower than without it.
Usage: python bench/speculative.py [--json FILE]   (needs scripts/build-llama-native.sh)
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.localrun import loopback_cluster  # noqa: E402
from support.native_cluster import NativeCluster, WorkerSpec  # noqa: E402
from support.paths import NATIVE_BIN  # noqa: E402
from support.synthetic import ModelShape, write_gguf  # noqa: E402

from hydra_compose.modelfacts.gguf_facts import read_model  # noqa: E402
from hydra_compose.planner.plan import PlanOptions, make_plan  # noqa: E402

TARGET = ModelShape("spec-target", n_layer=12, n_embd=256, n_head=4, n_head_kv=2, n_ff=704, n_vocab=4096)
DRAFT = ModelShape("spec-draft", n_layer=1, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_vocab=4096)
RTTS_MS = (0.0, 1.0, 4.0)
ACCEPTANCE = (2.0, 3.0, 4.0)
DRAFT_MAX = 3


def decode_tps(url: str) -> float:
    best = 0.0
    for _ in range(3):
        r = httpx.post(f"{url}/completion", timeout=600, json={
            "prompt": "Once upon a time", "n_predict": 128, "ignore_eos": True, "temperature": 0}).json()
        best = max(best, r["timings"]["predicted_per_second"])
    return best


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="speculative-"))
    target = write_gguf(work / "target.gguf", TARGET)
    draft = write_gguf(work / "draft.gguf", DRAFT)  # the same synthetic vocabulary as the target
    t_facts, d_facts = read_model(target), read_model(draft)
    rows = []
    print(f"{'RTT':>6} {'mode':>14} {'measured':>9} {'speed-up':>8} {'predicted':>9} {'auto picks':>10}")
    for rtt in RTTS_MS:
        with NativeCluster(NATIVE_BIN, work / "cluster") as cluster:
            for _ in range(3):
                cluster.add(WorkerSpec(1, rtt / 2))
            cfg = cluster.calibrated_config(work / "calibration", repeats=2)
            base_opts = PlanOptions(ctx=1024, split="all", speculative="off")
            off_plan = make_plan(cfg, t_facts, base_opts)
            with loopback_cluster(NATIVE_BIN, work / "server") as servers:
                args = [*off_plan.llama_server_args(), "-t", "1"]
                url = servers.start_server(target, args)
                off = decode_tps(url)
                servers.stop_server()
                rows.append({"rtt_ms": rtt, "mode": "off", "measured": round(off, 1),
                             "predicted": round(off_plan.predicted_tg_tokens_per_s, 1)})
                print(f"{rtt:6.1f} {'off':>14} {off:9.1f} {1:8.2f} {off_plan.predicted_tg_tokens_per_s:9.1f}", flush=True)
                for accept in ACCEPTANCE:
                    opts = replace(base_opts, speculative="draft", draft_max=DRAFT_MAX, acceptance=accept)
                    plan = make_plan(cfg, t_facts, opts, draft=d_facts)
                    auto = make_plan(cfg, t_facts, replace(opts, speculative="auto"), draft=d_facts)
                    url = servers.start_server(target, [*plan.llama_server_args(), "-t", "1", "-md", str(draft),
                                                        "--spec-synth-len", f"{accept:g}"])
                    spec = decode_tps(url)
                    servers.stop_server()
                    picks = "draft" if auto.speculation else "off"
                    rows.append({"rtt_ms": rtt, "mode": f"draft L={accept:g}", "measured": round(spec, 1),
                                 "speedup": round(spec / off, 2), "predicted": round(plan.predicted_tg_tokens_per_s, 1),
                                 "auto": picks, "where": plan.speculation.where})
                    print(f"{rtt:6.1f} {f'draft L={accept:g}':>14} {spec:9.1f} {spec / off:8.2f} "
                          f"{plan.predicted_tg_tokens_per_s:9.1f} {picks:>10}", flush=True)
    bad = [r for r in rows if r.get("auto") == "draft" and r["speedup"] < 0.98]
    for rtt in (1.0, 4.0):
        at = [r["speedup"] for r in rows if r["rtt_ms"] == rtt and r["mode"] == "draft L=3"]
        print(f"speed-up at acceptance 3, RTT {rtt:g} ms: {at[0]:.2f}x (target >= 1.5)")
    errors = [r["predicted"] / r["measured"] - 1 for r in rows]
    print(f"predicted vs measured: {min(errors):+.0%} .. {max(errors):+.0%}")
    print(f"auto enabled a mode measuring > 2 % slower: {len(bad)} case(s) (target 0)")
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
