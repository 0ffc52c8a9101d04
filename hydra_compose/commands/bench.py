from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from .. import vendors
from ..errors import BenchError, HydraError, PowerError, UsageError
from ..inventory.topology import master_url
from ..runtime.benchmark import BenchOptions, BenchResult, run_benchmark, served_model
from ..inventory.discovery import bus_key
from ..runtime.power import SweepRow, SweepState, sweep
from ..runtime.ssh import Target
from ..present import redact
from ..vendors.base import PowerControl, number
from .context import Project


def master_api_key(project: Project) -> str | None:
    """The cluster's key from the master's .env; registered so no printed line can show it."""
    from .generate import existing_key

    if project.config.cluster.target == "kubernetes":
        from ..render.kubernetes import API_KEY_FILE, OUT

        key = existing_key(project.root / OUT / API_KEY_FILE)
    else:
        key = existing_key(project.root / "compose" / project.config.master.host / ".env")
    if key:
        redact(key)
    return key


def same_server(url: str, other: str) -> bool:
    """Same scheme, host and port: where the cluster's key may go."""
    a, b = urlsplit(url), urlsplit(other)
    ports = {"http": 80, "https": 443}
    try:
        return (a.scheme, (a.hostname or "").lower(), a.port or ports.get(a.scheme)) == \
            (b.scheme, (b.hostname or "").lower(), b.port or ports.get(b.scheme))
    except ValueError:  # a port out of range
        return False


def options(project: Project | None, url: str | None, model: str | None, **kw: object) -> BenchOptions:
    if url is not None and not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", url):
        raise UsageError(f"--url {url!r} is not an http(s) URL", "write it like http://10.0.0.2:8080")
    if url is not None and not same_server(url, url):  # urlsplit refuses its port
        raise UsageError(f"--url {url!r} has an invalid port", "write it like http://10.0.0.2:8080")
    # the cluster's key goes to the cluster's own master only; another server gets HYDRA_API_KEY, if set
    key = os.environ.get("HYDRA_API_KEY") or None
    if project is not None and (url is None or same_server(url, master_url(project.config))):
        key = master_api_key(project) or key
    if key:
        redact(key)
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


def check_all(results: list[BenchResult]) -> None:
    for r in results:
        check_runs(r)


def check_runs(result: BenchResult) -> None:
    """A benchmark with failed runs is not a measurement."""
    if not result.runs or result.errors:
        raise BenchError(f"{result.errors} of {result.errors + len(result.runs)} runs failed against "
                         f"{result.options.url}", "look at the server's log (hydra-compose logs) and run again")


def parse_levels(text: str) -> list[int]:
    """--concurrency 4 or 1,4,8: the numbers of parallel streams to measure at."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or len(parts) > 16 or not all(p.isdigit() and 1 <= int(p) <= 256 for p in parts):
        raise UsageError(f"--concurrency {text} is not a list of stream counts",
                         "write it like 4 or 1,4,8 (1-256 each, up to 16 levels)")
    return sorted(set(int(p) for p in parts))


def run_levels(opts: BenchOptions, levels: list[int], advance=None) -> list[BenchResult]:  # noqa: ANN001
    return [run_benchmark(dataclasses.replace(opts, concurrency=c), advance) for c in levels]


def sweep_json(results: list[BenchResult]) -> dict:
    first = results[0].options
    return {"version": 1, "url": first.url, "model": first.model, "max_tokens": first.max_tokens,
            "levels": [r.level() for r in results], "results": [r.to_json() for r in results]}


def write_bench(results: list[BenchResult], out: Path) -> list[Path]:
    """bench.json (one level's result, or every level's), bench.csv (every run, with its
    concurrency), and with several levels latency.csv and the tok/s / p99 plot."""
    out.mkdir(parents=True, exist_ok=True)
    doc = results[0].to_json() if len(results) == 1 else sweep_json(results)
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    rows = [{"concurrency": r.options.concurrency, **run.row()} for r in results for run in r.runs]
    with (out / "bench.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["concurrency"])
        w.writeheader()
        w.writerows(rows)
    paths = [out / "bench.json", out / "bench.csv"]
    if len(results) > 1:
        from ..runtime.plots import concurrency_plot

        levels = [r.level() for r in results]
        with (out / "latency.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(levels[0]))
            w.writeheader()
            w.writerows(levels)
        paths += [out / "latency.csv", concurrency_plot(levels, out)]
    return paths


_BUS = r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]"
_GPU_SPEC = re.compile(rf"(?P<host>[A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}):(?:(?P<vendor>nvidia|amd):)?"
                       rf"(?:(?P<index>[0-9]{{1,3}})|(?P<bus>{_BUS}))")


def gpus_for(project: Project | None, specs: list[str]) -> list[PowerControl]:
    """--gpu HOST:INDEX, HOST:VENDOR:INDEX or HOST:BUS_ID -> the card's power control. On a host
    with GPUs of both vendors (an RTX 4070 and an MI50 are both GPU 0) the vendor or bus id is needed."""
    gpus: list[PowerControl] = []
    for spec in specs:
        m = _GPU_SPEC.fullmatch(spec)
        if not m:
            raise UsageError(f"--gpu {spec} is not HOST:INDEX, HOST:VENDOR:INDEX or HOST:BUS_ID",
                             "write it like local:0, rocm-box:amd:1 or box:0000:03:00.0")
        host_name, vendor = m["host"], m["vendor"]
        index = int(m["index"]) if m["index"] is not None else None
        devices = []
        if host_name == "local":
            target = Target("local")
            if project is not None:
                devices = [d for h in project.config.hosts if h.ssh is None for d in h.devices if d.is_gpu]
        else:
            if project is None or host_name not in {h.name for h in project.config.hosts}:
                raise UsageError(f"--gpu {spec}: host {host_name} is not in cluster.yaml", "use local or a host name")
            host = project.config.host(host_name)
            if not host.ssh:
                raise UsageError(f"host {host_name} has no ssh: entry", "add ssh: root@ADDRESS to it in cluster.yaml")
            target = Target(host_name, host.ssh)
            devices = [d for d in host.devices if d.is_gpu]
        if m["bus"]:
            found = [d for d in devices if d.bus_id and bus_key(d.bus_id) == bus_key(m["bus"])]
            if not found:
                raise UsageError(f"--gpu {spec}: no GPU with bus id {m['bus']} on {host_name} in cluster.yaml",
                                 "run `hydra-compose inspect --write` to record bus ids, or name the GPU by index")
            vendor, index = found[0].vendor, found[0].index or 0
        elif vendor is None:
            found_vendors = sorted({d.vendor for d in devices if (d.index or 0) == index})
            if len(found_vendors) > 1:
                raise UsageError(f"--gpu {spec}: {host_name} has GPU {index} of {' and '.join(found_vendors)}",
                                 f"name one: {', '.join(f'{host_name}:{v}:{index}' for v in found_vendors)}")
            vendor = found_vendors[0] if found_vendors else None
        power = vendors.get(vendor).power if vendor else _power_tool(target)
        if power is None:
            raise UsageError(f"--gpu {spec}: {vendor} devices have no power limit we can set", "pick a GPU")
        gpus.append(power(target, index))
    return gpus


def parse_limits(text: str) -> list[float]:
    values = [number(x) for x in text.split(",") if x.strip()]
    if not values or len(values) > 64 or any(v is None or not 1 <= v <= 10000 for v in values):
        raise UsageError(f"--limits {text} is not a list of watts", "write it like 160,190,225 (1-10000 W, up to 64)")
    return values  # type: ignore[return-value]


def interrupted(state: SweepState) -> HydraError:
    """What to say after Ctrl-C / SIGTERM: "restored" only when every limit was read back."""
    if state.restored or not state.originals:
        return HydraError("interrupted — the original power limits were restored and read back"
                          if state.originals else "interrupted — no power limit was changed")
    what = f"could not restore {', '.join(state.failed)}" if state.failed else "the original limits were not confirmed"
    return HydraError(f"interrupted — {what}",
                      "check and set by hand: " + "; ".join(f"{k} -> {v.current_w:g} W" for k, v in state.originals.items()))


def _power_tool(target: Target):  # noqa: ANN202
    """Without an inventory entry: NVIDIA when nvidia-smi answers there, else AMD."""
    try:
        target.run(["nvidia-smi", "-L"])
        return vendors.NVIDIA.power
    except PowerError:
        return vendors.AMD.power


def power_sweep(gpus: list[PowerControl], limits: list[float], opts: BenchOptions, settle_s: float,
                on_step=None, state: SweepState | None = None) -> list[SweepRow]:  # noqa: ANN001
    def bench() -> float:
        result = run_benchmark(opts)
        check_runs(result)  # never a 0 tok/s row: the sweep stops and the limits are restored
        return result.summary()["tg_tokens_per_s"]["median"]

    return sweep(gpus, limits, bench, settle_s, on_step, state)


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
