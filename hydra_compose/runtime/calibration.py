"""Measuring devices and links for the speed model (planner/speed.py), the way the cluster uses
them: llama-bench in the master's image (`docker compose run` of its service; the models travel on
stdin as a tar) or a native binary (the benchmarks), through --rpc to one idle worker at a time,
each device of the worker's own image and GPU access holding the whole calibration model.

Two dense sizes give the device's decode rate (the slope: per-token costs cancel) and the
per-token cost of reaching it (the intercept, minus the master's own work and the link's round
trip: the RPC stack); the MoE model the rate of expert matmuls (compute-bound on CPUs, and over
RPC slower than locally, measured); a short prompt the prompt rate. The link's round trip and
throughput come from the RPC link probe (rpc_link.py). Measured locally instead, a CPU device
reads 10-15 % faster (llama-bench repacks Q8_0 for its own CPU; an RPC server does not) and MoE
layers a third faster than they run in the cluster.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ClusterError
from ..modelfacts.gguf_facts import ModelFacts, read_model
from ..planner.speed import MASTER_TOKEN_S, RPC_STACK_MIN_S

BENCH_TOKENS = 32
SCRIPT = r"""set -e
mkdir -p /tmp/hc && tar -x -C /tmp/hc
run=()
flush() {
  [ ${#run[@]} -gt 0 ] || return 0
  /app/llama-bench -m "/tmp/hc/${run[0]}.gguf" "${run[@]:1}" -o json 2>/dev/null
  echo "==hydra-run-end"
  run=()
}
for a in "$@"; do if [ "$a" = ";" ]; then flush; else run+=("$a"); fi; done
flush
"""

Run = tuple[str, list[str]]  # (calibration model name, llama-bench arguments)


class Runner(Protocol):
    def llama_bench(self, models: dict[str, Path], runs: list[Run]) -> list[list[dict]]:
        """Each run's llama-bench JSON rows."""


@dataclass(frozen=True)
class NativeRunner:
    """A llama-bench binary here (the benchmarks); prefix runs it elsewhere (a network namespace)."""

    bin_dir: Path
    prefix: tuple[str, ...] = ()

    def llama_bench(self, models: dict[str, Path], runs: list[Run]) -> list[list[dict]]:
        out = []
        for name, args in runs:
            r = subprocess.run([*self.prefix, str(self.bin_dir / "llama-bench"), "-m", str(models[name]), *args,
                                "-o", "json"], capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise ClusterError(f"llama-bench failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}",
                                   "check the llama.cpp build")
            out.append(_rows(r.stdout))
        return out


@dataclass(frozen=True)
class ComposeRunner:
    """llama-bench inside a service's image, with the service's devices (`docker compose run`)."""

    compose: object  # runtime.stacks.Stack
    service: str

    def llama_bench(self, models: dict[str, Path], runs: list[Run]) -> list[list[dict]]:
        argv = ["run", "--rm", "-T", "--no-deps", "--entrypoint", "bash", self.service, "-c", SCRIPT, "bash"]
        for name, args in runs:
            argv += [name, *args, ";"]
        stack = self.compose
        r = subprocess.run(["docker", "compose", "-f", str(stack.compose_file), *argv], input=_tar(models),
                           capture_output=True, env=stack.env, timeout=1800)
        text = r.stdout.decode("utf-8", "replace")
        if r.returncode != 0 or text.count("==hydra-run-end") != len(runs):
            last = (r.stderr.decode("utf-8", "replace").strip().splitlines() or ["?"])[-1][:200]
            raise ClusterError(f"llama-bench in {self.service} on {stack.host.name} failed: {last}",
                               f"see `hydra-compose logs {stack.host.name} {self.service}`")
        return [_rows(part) for part in text.split("==hydra-run-end")[:len(runs)]]


def _tar(models: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in models.items():
            tar.add(str(path), arcname=f"{name}.gguf")
    return buf.getvalue()


def _rows(text: str) -> list[dict]:
    start = text.find("[")
    try:
        rows = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        rows = None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ClusterError("llama-bench printed no results", "run it by hand to see why (llama-bench -m ... -o json)")
    return rows


def seconds_per_token(rows: list[dict]) -> float:
    ts = rows[0].get("avg_ts")
    if not isinstance(ts, (int, float)) or not 0 < ts < 1e7:
        raise ClusterError("llama-bench reported no speed", "run it by hand to see why")
    return 1.0 / ts


def read_bytes(facts: ModelFacts) -> tuple[int, int]:
    """(dense, active expert) bytes one token reads with every layer and the output on one device."""
    share = facts.n_expert_used / facts.n_expert if facts.n_expert else 0.0
    experts = round(facts.expert_bytes * share)
    return sum(facts.layer_bytes) - facts.expert_bytes + facts.output_bytes, experts


@dataclass(frozen=True)
class DeviceFit:
    decode_gbs: float
    expert_gbs: float
    stack_ms: float  # per token: the RPC stack and the device's fixed cost, beyond the round trip
    prompt_tps: float


def device_runs(endpoint: str, place: list[str]) -> list[Run]:
    """The calibration runs of one device through --rpc (place: -ts putting the model on it alone)."""
    decode = ["--rpc", endpoint, *place, "-ngl", "99", "-p", "0", "-n", str(BENCH_TOKENS), "-r", "5"]
    return [("dense-small", decode), ("dense-large", decode), ("moe", decode),
            ("dense-small", ["--rpc", endpoint, *place, "-ngl", "99", "-p", "256", "-n", "0", "-r", "2"])]


def fit_device(results: list[list[dict]], facts: dict[str, ModelFacts], rtt_s: float) -> DeviceFit:
    t_small, t_large, t_moe = (seconds_per_token(r) for r in results[:3])
    small, _ = read_bytes(facts["dense-small"])
    large, _ = read_bytes(facts["dense-large"])
    if t_large <= t_small:
        raise ClusterError("the larger calibration model decoded faster than the smaller one",
                           "the device was busy: stop other work on it and calibrate again")
    rate = (large - small) / (t_large - t_small)  # bytes/s: the slope
    # the intercept: the master's own work, the round trip, the RPC stack and the device's fixed cost
    # (the last two are one per-token cost of using this device: recorded as the host's rpc_ms)
    stack = max(RPC_STACK_MIN_S, t_small - small / rate - MASTER_TOKEN_S - rtt_s)
    dense, experts = read_bytes(facts["moe"])
    expert_time = t_moe - MASTER_TOKEN_S - rtt_s - stack - dense / rate
    expert_rate = experts / expert_time if expert_time > 0 else rate
    prompt = results[3][0].get("avg_ts") or 0.0
    return DeviceFit(rate / 1e9, min(expert_rate, 10 * rate) / 1e9, stack * 1000, float(prompt))


def model_facts(models: dict[str, Path]) -> dict[str, ModelFacts]:
    return {name: read_model(path) for name, path in models.items()}
