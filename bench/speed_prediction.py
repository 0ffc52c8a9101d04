"""Predicted vs measured decode speed (issue 14): 1-3 CPU workers of different thread counts, a
dense and a MoE model, links with added delay (a userspace delay proxy: this kernel has no
sch_netem) and limited bandwidth (tbf in a network namespace). Each case is calibrated first,
with calibrate's own measurement code, then planned; the plan's split is then measured with
llama-bench. Target: every case within 20 %.

Usage: python bench/speed_prediction.py [--json FILE]   (root for the namespaces; scripts/build-llama-native.sh)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.native_cluster import NativeCluster, WorkerSpec  # noqa: E402
from support.netns import available  # noqa: E402
from support.paths import NATIVE_BIN  # noqa: E402
from support.synthetic import ModelShape, write_gguf  # noqa: E402

from hydra_compose.modelfacts.gguf_facts import read_model  # noqa: E402
from hydra_compose.planner.plan import PlanOptions, make_plan  # noqa: E402

DENSE = ModelShape("pred-dense", n_layer=16, n_embd=1024, n_head=16, n_head_kv=4, n_ff=2816, n_vocab=8192)
MOE = ModelShape("pred-moe", arch="qwen3moe", n_layer=8, n_embd=1024, n_head=16, n_head_kv=4, head_dim=64,
                 n_ff=2048, n_expert=32, n_expert_used=4, n_ff_exp=256, n_vocab=8192)
W = WorkerSpec
CASES = [  # (name, model, workers, split)
    ("dense, 1 worker -t 2, loopback", DENSE, [W(2)], "all"),
    ("dense, 2 workers -t 1 / -t 2, loopback", DENSE, [W(1), W(2)], "all"),
    ("dense, 3 workers -t 1, loopback", DENSE, [W(1), W(1), W(1)], "all"),
    ("dense, 2 workers -t 1, RTT 0.2 ms", DENSE, [W(1, 0.1), W(1, 0.1)], "all"),
    ("dense, 2 workers -t 1, RTT 1 ms", DENSE, [W(1, 0.5), W(1, 0.5)], "all"),
    ("dense, 1 worker -t 2, RTT 5 ms", DENSE, [W(2, 2.5)], "all"),
    ("dense, 1 worker -t 2, 100 Mbit", DENSE, [W(2, rate_mbit=100)], "all"),
    ("dense, 2 workers -t 1, 1 Gbit + RTT 1 ms", DENSE, [W(1, 0.5, 1000), W(1, 0.5, 1000)], "all"),
    ("dense, 2 workers -t 1 / -t 2, split: speed", DENSE, [W(1), W(2)], "speed"),
    ("MoE, 2 workers -t 1 / -t 2, loopback", MOE, [W(1), W(2)], "all"),
    ("MoE, 1 worker -t 2, RTT 1 ms", MOE, [W(2, 0.5)], "all"),
]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="speed-prediction-"))
    models = {s.name: write_gguf(work / f"{s.name}.gguf", s) for s in (DENSE, MOE)}
    netns = available()
    rows = []
    print(f"{'case':46} {'split':>10} {'predicted':>9} {'measured':>9} {'error':>7}")
    for name, shape, specs, split in CASES:
        if netns and any(s.rate_mbit for s in specs):
            print(f"{name:46} skipped: {netns}")
            continue
        with NativeCluster(NATIVE_BIN, work / "run") as cluster:
            for spec in specs:
                cluster.add(spec)
            cfg = cluster.calibrated_config(work / "calibration")
            plan = make_plan(cfg, read_model(models[shape.name]), PlanOptions(ctx=2048, split=split, speculative="off"))
            measured = max(cluster.tg(models[shape.name], plan.rpc_endpoints, plan.tensor_split) for _ in range(4))
        predicted = plan.predicted_tg_tokens_per_s
        error = predicted / measured - 1
        rows.append({"case": name, "split": plan.tensor_split, "predicted": round(predicted, 1),
                     "measured": round(measured, 1), "error": round(error, 3)})
        print(f"{name:46} {str(plan.tensor_split):>10} {predicted:9.1f} {measured:9.1f} {100 * error:+6.1f}%",
              flush=True)
        if "-v" in sys.argv:
            for h in cfg.hosts[1:]:
                m, d = h.measured, h.devices[0].measured
                print(f"    {h.name}: -t {h.devices[0].threads}, decode {d.decode_gbs:.1f} GB/s, experts "
                      f"{d.expert_gbs:.1f} GB/s, rtt {m.rtt_ms:.3f} ms, stack {m.rpc_ms:.2f} ms")
    worst = max(abs(r["error"]) for r in rows)
    print(f"worst |error|: {100 * worst:.1f} % over {len(rows)} cases (target: 20 %)")
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
