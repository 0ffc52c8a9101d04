from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict
from pathlib import Path

from .. import vendors
from ..errors import BenchError, PowerError, UsageError
from ..inventory.topology import master_url
from ..runtime.benchmark import BenchOptions, BenchResult, run_benchmark, served_model
from ..runtime.power import SweepRow, sweep
from ..runtime.ssh import Target
from ..vendors.base import PowerControl
from .context import Project


def master_api_key(project: Project) -> str | None:
    from .generate import existing_key

    return existing_key(project.root / "compose" / project.config.master.host / ".env")


def options(project: Project | None, url: str | None, model: str | None, **kw: object) -> BenchOptions:
    key = master_api_key(project) if project else None
    if url is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        raise UsageError(f"--url {url!r} is not an http(s) URL", "write it like http://10.0.0.2:8080")
    if url is not None and model is None:
        # another server than cluster.yaml's master, maybe: ask it what it serves
        model = served_model(url, key, float(kw.get("timeout_s", 30)))  # type: ignore[arg-type]
    if url is None or model is None:
        if project is None:
            raise UsageError("no cluster.yaml to take the master's URL and model from", "pass --url and --model")
        url = url or master_url(project.config)
        model = model or project.model_entry(None)[0]
    return BenchOptions(url=url.rstrip("/"), model=model, api_key=key, **kw)  # type: ignore[arg-type]


def run(opts: BenchOptions, advance=None) -> BenchResult:  # noqa: ANN001
    return run_benchmark(opts, advance)


def check_runs(result: BenchResult) -> None:
    """A benchmark with failed runs is not a measurement."""
    if not result.runs or result.errors:
        raise BenchError(f"{result.errors} of {result.errors + len(result.runs)} runs failed against "
                         f"{result.options.url}", "look at the server's log (hydra-compose logs) and run again")


def write_bench(result: BenchResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    with (out / "bench.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(asdict(result.runs[0]).keys()) if result.runs else ["ttft_s"])
        w.writeheader()
        for r in result.runs:
            w.writerow(asdict(r))
    return [out / "bench.json", out / "bench.csv"]


def gpus_for(project: Project | None, specs: list[str]) -> list[PowerControl]:
    gpus: list[PowerControl] = []
    for spec in specs:
        m = re.fullmatch(r"(?P<host>[^:]+):(?P<index>\d+)", spec)
        if not m:
            raise UsageError(f"--gpu {spec} is not HOST:INDEX", "write it like local:0 or rocm-box:1")
        host_name, index = m["host"], int(m["index"])
        if host_name == "local":
            target, vendor = Target("local"), None
        else:
            if project is None or host_name not in {h.name for h in project.config.hosts}:
                raise UsageError(f"--gpu {spec}: host {host_name} is not in cluster.yaml", "use local or a host name")
            host = project.config.host(host_name)
            if not host.ssh:
                raise UsageError(f"host {host_name} has no ssh: entry", "add ssh: root@ADDRESS to it in cluster.yaml")
            target = Target(host_name, host.ssh)
            found = {d.vendor for d in host.devices if d.is_gpu and (d.index or 0) == index}
            vendor = found.pop() if len(found) == 1 else None
        power = vendors.get(vendor).power if vendor else _power_tool(target)
        if power is None:
            raise UsageError(f"--gpu {spec}: {vendor} devices have no power limit we can set", "pick a GPU")
        gpus.append(power(target, index))
    return gpus


def _power_tool(target: Target):  # noqa: ANN202
    """Without an inventory entry: the first vendor whose tool answers there (NVIDIA before AMD)."""
    tools = [v.power for v in vendors.ALL if v.power is not None]
    for power in tools:
        try:
            target.run(power.probe_argv)
            return power
        except PowerError:
            continue
    return tools[0]  # its own error then says which tool is missing


def power_sweep(gpus: list[PowerControl], limits: list[float], opts: BenchOptions, settle_s: float,
                on_step=None) -> list[SweepRow]:  # noqa: ANN001
    def bench() -> float:
        result = run_benchmark(opts)
        check_runs(result)  # never a 0 tok/s row: the sweep stops and the limits are restored
        return result.summary()["tg_tokens_per_s"]["median"]

    return sweep(gpus, limits, bench, settle_s, on_step)


def write_sweep(rows: list[SweepRow], out: Path) -> list[Path]:
    from ..runtime.plots import sweep_plots

    out.mkdir(parents=True, exist_ok=True)
    data = [asdict(r) for r in rows]
    (out / "sweep.json").write_text(json.dumps({"version": 1, "rows": data}, indent=2) + "\n")
    with (out / "sweep.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(data[0].keys()))
        w.writeheader()
        w.writerows(data)
    lines = ["| GPU | Power limit | Generation speed | Avg / peak power | tok/s per W | Max temp | SM clock |",
             "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        def f(v, fmt):  # noqa: ANN001, ANN202
            return "-" if v is None else format(v, fmt)

        lines.append(f"| {r.gpu} | {r.limit_w:g} W | {r.tg_tokens_per_s:.2f} tok/s | "
                     f"{f(r.avg_power_w, '.0f')} / {f(r.peak_power_w, '.0f')} W | {f(r.tokens_per_joule, '.3f')} | "
                     f"{f(r.max_temp_c, '.0f')} °C | {f(r.avg_sm_clock_mhz, '.0f')} MHz |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    return [out / "sweep.json", out / "sweep.csv", out / "sweep.md", *sweep_plots(rows, out)]
