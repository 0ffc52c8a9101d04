"""Native clusters for the speed benchmarks: CPU workers on loopback, optionally behind a delay
proxy (latency) and/or inside a network namespace with tbf (bandwidth), calibrated the way
`hydra-compose calibrate` calibrates a real cluster (same measurement code: device fits from
llama-bench, links over the workers' RPC ports, the RPC stack through llama-bench --rpc), and
turned into the cluster.yaml the planner sees."""

from __future__ import annotations

import datetime
import json
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from hydra_compose.inventory.config import ClusterConfig
from hydra_compose.runtime.calibration import DeviceFit, NativeRunner, device_runs, fit_device, model_facts
from hydra_compose.runtime.calibration_models import write_models
from hydra_compose.runtime.rpc_link import measure_link

from .localrun import free_port, wait_port
from .netns import link_namespace

HERE = Path(__file__).parent


@dataclass(frozen=True)
class WorkerSpec:
    threads: int
    one_way_ms: float = 0.0  # delay proxy in front of it
    rate_mbit: float | None = None  # in its own network namespace, tbf-limited


@dataclass
class Running:
    dial: str  # host:port the master dials (proxy, namespace or the worker itself)
    spec: WorkerSpec


class NativeCluster:
    """Workers started by PID and stopped by PID; namespaces removed on exit."""

    def __init__(self, bin_dir: Path, work: Path) -> None:
        self.bin_dir, self.work = bin_dir, work
        self.stack = ExitStack()
        self.procs: list[subprocess.Popen] = []
        self.workers: list[Running] = []
        work.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> NativeCluster:
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.stack.close()

    def _spawn(self, argv: list[str]) -> None:
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True))

    def add(self, spec: WorkerSpec) -> Running:
        index = len(self.workers)
        host, prefix = "127.0.0.1", []
        if spec.rate_mbit:
            ns = self.stack.enter_context(link_namespace(index, spec.rate_mbit))
            host, prefix = ns.address, ns.argv([])
        port = free_port()
        # -c: tensors are uploaded once per worker, then loaded from its cache (as in the generated stacks)
        server = [str(self.bin_dir / "ggml-rpc-server"), "-H", host, "-p", str(port), "-t", str(spec.threads), "-c"]
        cache = self.work / f"cache-{index}"
        self._spawn(["env", f"LLAMA_CACHE={cache}", "sh", "-c", 'trap "" PIPE; exec "$@"', "sh", *prefix, *server])
        wait_port(host, port, 20)
        dial = f"{host}:{port}"
        if spec.one_way_ms:
            proxy = free_port()
            self._spawn([sys.executable, str(HERE / "delay_proxy.py"), f"127.0.0.1:{proxy}", dial, str(spec.one_way_ms)])
            wait_port("127.0.0.1", proxy, 20)
            dial = f"127.0.0.1:{proxy}"
        running = Running(dial, spec)
        self.workers.append(running)
        return running

    def calibrated_config(self, cache: Path, repeats: int = 3) -> ClusterConfig:
        """cluster.yaml for these workers with calibrate's measured blocks, measured now (the median of
        a few calibrations: 2 shared cores make single runs wander)."""
        models = write_models(cache) if not (cache / "moe.gguf").exists() else \
            {p.stem: p for p in cache.glob("*.gguf")}
        facts = model_facts(models)
        runner = NativeRunner(self.bin_dir)
        today, hosts = datetime.date.today().isoformat(), []
        for i, w in enumerate(self.workers):
            link = measure_link(*_split(w.dial))
            fits = [fit_device(runner.llama_bench(models, device_runs(w.dial, [])), facts, link.rtt_s)
                    for _ in range(repeats)]
            fit = DeviceFit(*(statistics.median(getattr(f, k) for f in fits)
                              for k in ("decode_gbs", "expert_gbs", "stack_ms", "prompt_tps")))
            host, port = _split(w.dial)
            hosts.append({"name": f"w{i}", "address": host, "measured": {
                "rtt_ms": link.rtt_s * 1000, "up_gbps": link.up_bytes_s * 8 / 1e9,
                "down_gbps": link.down_bytes_s * 8 / 1e9, "rpc_ms": fit.stack_ms, "date": today, "ref": "b11434"},
                "devices": [{"vendor": "cpu", "memory_gb": 8, "threads": w.spec.threads, "rpc_port": port,
                             "measured": {"decode_gbs": fit.decode_gbs, "expert_gbs": fit.expert_gbs,
                                          "date": today, "ref": "b11434"}}]})
        # plain RPC: these workers are dialled directly (a namespace's address is not loopback, and
        # rpc_tls would otherwise be on by default and dial tunnels nobody runs here)
        return ClusterConfig.model_validate({"cluster": {"rpc_tls": False},
                                             "master": {"host": "master", "cache_ram_gb": 0}, "hosts": [
            {"name": "master", "address": "127.0.0.1", "devices": []}, *hosts]})

    def tg(self, model: Path, rpc: list[str], split: list[int], runs: int = 3, extra: list[str] = ()) -> float:
        """Decode tok/s as llama-bench measures it with this --rpc order and split."""
        argv = [str(self.bin_dir / "llama-bench"), "-m", str(model), "--rpc", ",".join(rpc), "-ngl", "99",
                "-p", "0", "-n", "64", "-r", str(runs), "-o", "json", *extra]
        if len(split) > 1:
            argv += ["-ts", "/".join(map(str, split))]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout[out.stdout.index("["):])[0]["avg_ts"]


def _split(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


def settle(seconds: float = 1.0) -> None:
    time.sleep(seconds)
