"""llama.cpp's experimental tensor parallelism (`-sm tensor`, b11434) against the layer split the
planner emits, over RPC on loopback: two CPU workers (-t 1), the dense model of
bench/speed_prediction.py, decode tok/s from llama-bench, both in one run. Why the planner never
chooses `--split-mode tensor` (issue 14).

Usage: python bench/split_mode.py   (needs scripts/build-llama-native.sh)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from speed_prediction import DENSE  # noqa: E402
from support.native_cluster import NativeCluster, WorkerSpec  # noqa: E402
from support.paths import NATIVE_BIN  # noqa: E402
from support.synthetic import write_gguf  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="split-mode-"))
    model = write_gguf(work / "dense.gguf", DENSE)
    with NativeCluster(NATIVE_BIN, work / "run") as cluster:
        for _ in range(2):
            cluster.add(WorkerSpec(1))
        rpc = [w.dial for w in cluster.workers]
        layer = max(cluster.tg(model, rpc, [1, 1], extra=["-sm", "layer"]) for _ in range(2))
        tensor = max(cluster.tg(model, rpc, [1, 1], extra=["-sm", "tensor"]) for _ in range(2))
    print(f"layer split: {layer:.1f} tok/s; -sm tensor: {tensor:.1f} tok/s ({100 * (tensor / layer - 1):+.0f} %)")


if __name__ == "__main__":
    main()
