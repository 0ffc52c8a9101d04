"""Does the planned split decode fast? Two CPU workers of different speed
(1 and 2 threads) on loopback; tg tok/s (llama-bench, 128 tokens, 3 repetitions, best of 3 interleaved rounds)
of the planned split, of every split on a grid, and of llama.cpp's default
(no --tensor-split: proportional to reported memory, here 1:1), in one run.

Usage: python bench/split_speed.py   (needs scripts/build-llama-native.sh)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.paths import NATIVE_BIN  # noqa: E402

from hydra_compose.inventory.config import ClusterConfig  # noqa: E402
from hydra_compose.modelfacts.gguf_facts import read_model  # noqa: E402
from support.localrun import loopback_cluster  # noqa: E402
from hydra_compose.planner.plan import PlanOptions, make_plan  # noqa: E402
from support.synthetic import SPEED_SHAPE, write_gguf  # noqa: E402

GRID = ["1/0", "3/1", "1/1", "1/3", "0/1"]
ROUNDS = 3


def tg(bin_dir: Path, model: Path, rpc: list[str], split: str | None) -> float:
    argv = [str(bin_dir / "llama-bench"), "-m", str(model), "--rpc", ",".join(rpc), "-ngl", "99",
            "-p", "0", "-n", "128", "-r", "3", "-o", "json"]
    if split:
        argv += ["-ts", split]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["avg_ts"]


def main() -> None:
    bin_dir = NATIVE_BIN
    work = Path(tempfile.mkdtemp(prefix="split-speed-"))
    model_path = write_gguf(work / "speed-16l.gguf", SPEED_SHAPE)
    model = read_model(model_path)
    with loopback_cluster(bin_dir, work / "run") as cluster:
        a = cluster.start_worker(threads=1)
        b = cluster.start_worker(threads=2)
        cfg = ClusterConfig.model_validate({"master": {"host": "local"}, "hosts": [
            {"name": "local", "address": "127.0.0.1", "devices": [
                {"vendor": "cpu", "memory_gb": 4, "threads": 1, "rpc_port": int(a.split(":")[1])},
                {"vendor": "cpu", "memory_gb": 4, "threads": 2, "rpc_port": int(b.split(":")[1])}]}]})
        plan = make_plan(cfg, model, PlanOptions(ctx=4096))
        print(f"model {model.name}: {model.n_layer} layers, {model.file_bytes / 1e6:.0f} MB; workers A (-t 1) {a}, B (-t 2) {b}")
        print(f"plan: rpc {plan.rpc_endpoints} split {plan.tensor_split}, predicted {plan.predicted_tg_tokens_per_s:.0f} tok/s")
        for w in plan.warnings:
            print(f"  warning: {w}")
        planned_split = "/".join(map(str, plan.tensor_split)) if len(plan.devices) > 1 else None
        # Loopback timings on 2 cores wander by 10-20 %: measure every configuration in
        # several interleaved rounds and keep its best, so order and drift cancel out.
        configs = {"planned": (plan.rpc_endpoints, planned_split), "default": ([a, b], None),
                   **{s: ([a, b], s) for s in GRID}}
        results: dict[str, float] = {}
        for _ in range(ROUNDS):
            for name, (rpc, split) in configs.items():
                results[name] = max(results.get(name, 0.0), tg(bin_dir, model_path, rpc, split))
        planned, default = results.pop("planned"), results.pop("default")
        grid = results
    best_split, best = max(grid.items(), key=lambda kv: kv[1])
    print(f"{'split A/B':12} {'tg tok/s':>9}")
    for s, v in grid.items():
        print(f"{s:12} {v:9.1f}")
    print(f"{'default':12} {default:9.1f}")
    print(f"{'planned':12} {planned:9.1f}")
    print(f"planned / best grid ({best_split}): {planned / best:.2f}   (target >= 0.95)")
    print(f"planned / llama.cpp default:   {planned / default:.2f}   (target >= 1.5)")


if __name__ == "__main__":
    main()
