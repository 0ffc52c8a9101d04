"""Planned vs actual memory per device, for every test model shape.

Starts 2-3 CPU workers on loopback and llama-server with each plan's arguments,
then prints what llama-server reports allocating next to our plan.
Usage: python bench/plan_accuracy.py   (needs scripts/build-llama-native.sh)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import CACHE, smollm2_path  # noqa: E402
from test_plan_accuracy import CASES, cluster_for  # noqa: E402

from hydra_compose.gguf_facts import read_model  # noqa: E402
from hydra_compose.llama_log import parse_server_log  # noqa: E402
from hydra_compose.localrun import loopback_cluster  # noqa: E402
from hydra_compose.plan import make_plan  # noqa: E402
from hydra_compose.synthetic import TEST_SHAPES, write_llama_gguf  # noqa: E402

MiB = 1024 * 1024


def main() -> None:
    bin_dir = CACHE / "llama-native-11434.0.0" / "bin"
    work = Path(tempfile.mkdtemp(prefix="plan-accuracy-"))
    for s in TEST_SHAPES:
        write_llama_gguf(work / f"{s.name}.gguf", s)
    print(f"{'model':14} {'options':34} {'device':22} {'planned MiB':>11} {'actual MiB':>10} {'diff MiB':>8} {'diff %':>6}")
    worst = 0.0
    for shape, opts in CASES:
        path = smollm2_path() if shape == "smollm2" else work / f"{shape}.gguf"
        model = read_model(path)
        with loopback_cluster(bin_dir, work / "run") as cluster:
            for _ in range(2 if shape == "smollm2" else 3):
                cluster.start_worker(threads=1)
            plan = make_plan(cluster_for(cluster.endpoints), model, opts)
            cluster.start_server(path, [*plan.llama_server_args(), "--verbosity", "99"])
            log = parse_server_log(cluster.stop_server())
        label = f"ctx={plan.ctx} p={opts.parallel} fa={int(opts.flash_attn)} k={opts.cache_type_k}"
        for d in plan.devices:
            actual = log.devices[d.slot.endpoint].total_bytes
            diff = (actual - d.total_bytes) / MiB
            pct = 100 * diff * MiB / actual
            worst = max(worst, abs(diff))
            print(f"{shape:14} {label:34} {d.slot.endpoint:22} {d.total_bytes / MiB:11.2f} {actual / MiB:10.2f} "
                  f"{diff:8.2f} {pct:6.2f}")
    print(f"largest difference: {worst:.2f} MiB (target: within max(2 %, 16 MiB) per device)")


if __name__ == "__main__":
    main()
