"""Decode speed of a MoE model with its experts on the devices vs in the master's RAM.

Two CPU workers on loopback and llama-server with each plan's arguments, all in
one run: (1) workers large enough for everything (experts: gpu), (2) workers too
small for the experts, so the planner keeps the experts of the first layers in
the master's RAM (experts: auto, explicit -ot patterns), (3) every expert in RAM
(experts: cpu). Prints llama-server's own decode tok/s next to the planner's
prediction and the memory the plan leaves on each device.
Usage: python bench/moe_offload.py   (needs scripts/build-llama-native.sh)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.paths import NATIVE_BIN  # noqa: E402
from support.accuracy import cluster_for  # noqa: E402

from hydra_compose.runtime.benchmark import BenchOptions, run_benchmark  # noqa: E402
from hydra_compose.modelfacts.gguf_facts import read_model  # noqa: E402
from support.localrun import loopback_cluster  # noqa: E402
from hydra_compose.planner.plan import PlanOptions, make_plan  # noqa: E402
from support.synthetic import ModelShape, write_gguf  # noqa: E402

MiB = 1024 * 1024
SHAPE = ModelShape("moe-bench", arch="qwen3moe", n_layer=8, n_embd=1024, n_head=16, n_head_kv=4, head_dim=64,
                   n_ff=2048, n_expert=32, n_expert_used=4, n_ff_exp=512, n_vocab=16384)
VARIANTS = (("experts on the devices", "gpu", 2.0), ("auto: experts of some layers in RAM", "auto", 0.0),
            ("all experts in RAM", "cpu", 2.0))


def main() -> None:
    bin_dir = NATIVE_BIN
    work = Path(tempfile.mkdtemp(prefix="moe-offload-"))
    path = write_gguf(work / "moe-bench.gguf", SHAPE)
    model = read_model(path)
    dense = sum(model.layer_bytes) - model.expert_bytes + model.output_bytes
    print(f"model {SHAPE.arch}: {model.n_layer} layers, experts {model.expert_bytes / MiB:.0f} MiB of "
          f"{(dense + model.expert_bytes) / MiB:.0f} MiB, {model.n_expert_used}/{model.n_expert} active")
    print(f"{'variant':38} {'split':>7} {'layers in RAM':>14} {'predicted':>9} {'measured':>9}  per device MiB (plan)")
    with loopback_cluster(bin_dir, work / "run") as cluster:
        for _ in range(2):
            cluster.start_worker(threads=1)
        for label, experts, memory_gb in VARIANTS:
            # auto: workers that hold the dense half and some experts, not all of them
            gb = memory_gb or (dense + model.expert_bytes // 2) / 2 / 1024**3 + 0.02
            plan = make_plan(cluster_for(cluster.endpoints, gb), model,
                             PlanOptions(ctx=2048, parallel=1, experts=experts))
            url = cluster.start_server(path, plan.llama_server_args())
            result = run_benchmark(BenchOptions(url=url, model="moe", runs=3, max_tokens=128, prompt_tokens=32))
            cluster.stop_server()
            measured = result.summary()["server_tg_tokens_per_s"]["median"]
            print(f"{label:38} {'/'.join(map(str, plan.tensor_split)):>7} {len(plan.experts_on_host):>14} "
                  f"{plan.predicted_tg_tokens_per_s:9.1f} {measured:9.1f}  "
                  f"{[round(d.total_bytes / MiB) for d in plan.devices]}")


if __name__ == "__main__":
    main()
