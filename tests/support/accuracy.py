"""The plan-accuracy cases: llama-server started with each plan's arguments on loopback
CPU workers, and its -lv 4 log read back per device. Shared by tests/test_plan_accuracy.py
and bench/plan_accuracy.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from hydra_compose.inventory.config import ClusterConfig
from hydra_compose.modelfacts.gguf_facts import read_model
from hydra_compose.planner.plan import PlanOptions, make_plan

from .llama_log import parse_server_log
from .localrun import loopback_cluster
from .paths import gemma3_path, smollm2_path
from .synthetic import ARCH_SHAPES, TEST_SHAPES

MiB = 1024 * 1024


def cluster_for(endpoints: list[str], memory_gb: float = 2.0) -> ClusterConfig:
    devices = [{"vendor": "cpu", "memory_gb": memory_gb, "threads": 1, "rpc_port": int(e.rsplit(":", 1)[1])}
               for e in endpoints]
    return ClusterConfig.model_validate({"master": {"host": "local", "cache_ram_gb": 0},
                                         "hosts": [{"name": "local", "address": "127.0.0.1", "devices": devices}]})


def tolerance(planned: int) -> int:
    return max(int(0.02 * planned), 16 * MiB)


@dataclass(frozen=True)
class Case:
    model: str  # a synthetic shape's name, "smollm2" or "gemma3-270m"
    opts: PlanOptions
    memory_gb: float = 2.0  # per worker; small values make the planner's own context memory-bound
    workers: int = 3
    offload: bool = False  # the workers are too small for the experts: some must go to the master's RAM

    @property
    def id(self) -> str:
        o = self.opts
        ctx = o.ctx or f"auto{self.memory_gb:g}G"
        return f"{self.model}-{ctx}-p{o.parallel}-fa{int(o.flash_attn)}-{o.cache_type_k}-{o.split}" + \
            ("-offload" if self.offload else "")


CASES = [Case(s.name, opts) for s in TEST_SHAPES for opts in (
    PlanOptions(ctx=4096, parallel=2, split="all", flash_attn=True),
    PlanOptions(ctx=2048, parallel=1, split="all", flash_attn=False, cache_type_k="q8_0"),
)] + [
    Case("smollm2", PlanOptions(ctx=8192, parallel=4, split="all", cache_type_k="q8_0", cache_type_v="q8_0"), workers=2),
    Case("smollm2", PlanOptions(ctx=None, parallel=1, split="speed"), workers=2),
    Case("gemma3-270m", PlanOptions(ctx=8192, parallel=2, split="all")),
    Case("gemma3-270m", PlanOptions(ctx=None, parallel=2, split="all"), memory_gb=0.4),
] + [Case(s.name, PlanOptions(ctx=4096, parallel=2, split="all")) for s in ARCH_SHAPES] \
  + [Case(s.name, PlanOptions(ctx=None, parallel=2, split="all", flash_attn=s.name != "gpt-oss"), memory_gb=0.2)
     for s in ARCH_SHAPES] + [
    Case("qwen3moe", PlanOptions(ctx=2048, parallel=1), memory_gb=0.03, workers=2, offload=True),
    Case("gpt-oss", PlanOptions(ctx=4096, parallel=2, experts="auto"), memory_gb=0.03, workers=2, offload=True),
    Case("qwen3next", PlanOptions(ctx=None, parallel=1, experts="cpu"), memory_gb=0.05, workers=2, offload=True),
]


def model_path(name: str, synthetic_dir: Path) -> Path | None:
    if name == "smollm2":
        return smollm2_path()
    if name == "gemma3-270m":
        return gemma3_path()
    return synthetic_dir / f"{name}.gguf"


def run_case(case: Case, path: Path, bin_dir: Path, work: Path):  # noqa: ANN201
    """Plans, starts llama-server with the plan's arguments, asks it one question; returns (plan, log)."""
    model = read_model(path)
    with loopback_cluster(bin_dir, work) as cluster:
        for _ in range(case.workers):
            cluster.start_worker(threads=1)
        plan = make_plan(cluster_for(cluster.endpoints, case.memory_gb), model, case.opts)
        url = cluster.start_server(path, [*plan.llama_server_args(), "--verbosity", "99"])
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        if reply.status_code != 200:
            raise RuntimeError(f"llama-server did not answer: {reply.status_code} {reply.text[:200]}")
        log = parse_server_log(cluster.stop_server())
    return plan, log
