"""Does the planned split decode fast? Two CPU workers of different speed on loopback, planned from
figures measured the way `hydra-compose calibrate` measures them; tg tok/s (llama-bench, 64
tokens, 3 repetitions, best of 3 interleaved rounds) of the planned split, of every split on a
grid, and of llama.cpp's default (no --tensor-split: proportional to reported memory, here 1:1),
in one run per case:
  - A `-t 1`, B `-t 2` (workers differing only in threads: on this 2-core machine the
    difference is small and loopback timings wander 10-20 %);
  - the same with A behind a delay proxy adding 2 ms per round trip (a slower box on a
    worse link, as in a house).

Usage: python bench/split_speed.py   (needs scripts/build-llama-native.sh)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.native_cluster import NativeCluster, WorkerSpec  # noqa: E402
from support.paths import NATIVE_BIN  # noqa: E402
from support.synthetic import SPEED_SHAPE, write_gguf  # noqa: E402

from hydra_compose.modelfacts.gguf_facts import read_model  # noqa: E402
from hydra_compose.planner.plan import PlanOptions, make_plan  # noqa: E402

GRID = [[1, 0], [3, 1], [1, 1], [1, 3], [0, 1]]
ROUNDS = 3
CASES = [("A -t 1, B -t 2, loopback", [WorkerSpec(1), WorkerSpec(2)]),
         ("A -t 1 behind +2 ms RTT, B -t 2", [WorkerSpec(1, one_way_ms=1.0), WorkerSpec(2)])]


def run_case(work: Path, model_path: Path, name: str, specs: list[WorkerSpec]) -> tuple[float, float]:
    model = read_model(model_path)
    with NativeCluster(NATIVE_BIN, work / "run") as cluster:
        for spec in specs:
            cluster.add(spec)
        a, b = (w.dial for w in cluster.workers)
        cfg = cluster.calibrated_config(work / "calibration")
        plan = make_plan(cfg, model, PlanOptions(ctx=4096, speculative="off"))
        print(f"\n{name}: plan {plan.rpc_endpoints} split {plan.tensor_split}, predicted "
              f"{plan.predicted_tg_tokens_per_s:.0f} tok/s")
        # every configuration in several interleaved rounds, keeping its best: order and drift cancel out
        configs = {"default": ([a, b], [])}
        configs.update({"/".join(map(str, s)): ([a, b] if all(s) else [[a], [b]][s.index(max(s))],
                                                 s if all(s) else []) for s in GRID})
        planned_args = (plan.rpc_endpoints, plan.tensor_split if len(plan.tensor_split) > 1 else [])
        # the planned configuration measured once: when it is a grid point, that very run
        same = [key for key, args in configs.items() if key != "default" and args == planned_args]
        if not same:
            configs["planned"] = planned_args
        results: dict[str, float] = {}
        for _ in range(ROUNDS):
            for key, (rpc, split) in configs.items():
                results[key] = max(results.get(key, 0.0), cluster.tg(model_path, rpc, split))
    planned = results[same[0]] if same else results.pop("planned")
    default = results.pop("default")
    if same:
        print(f"the planned configuration is the grid's {same[0]}")
    best_split, best = max(results.items(), key=lambda kv: kv[1])
    print(f"{'split A/B':12} {'tg tok/s':>9}")
    for s, v in results.items():
        print(f"{s:12} {v:9.1f}")
    print(f"{'default':12} {default:9.1f}\n{'planned':12} {planned:9.1f}")
    print(f"planned / best grid ({best_split}): {planned / best:.2f}   (target >= 0.95)")
    print(f"planned / llama.cpp default:   {planned / default:.2f}   (target >= 1.5)")
    return planned / best, planned / default


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="split-speed-"))
    model_path = write_gguf(work / "speed-16l.gguf", SPEED_SHAPE)
    print(f"model {SPEED_SHAPE.name}: {SPEED_SHAPE.n_layer} layers, {model_path.stat().st_size / 1e6:.0f} MB")
    for name, specs in CASES:
        run_case(work, model_path, name, specs)


if __name__ == "__main__":
    main()
