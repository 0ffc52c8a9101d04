"""The command line: parses, calls a command module, hands its result to present.py.

Heavy modules (pydantic, gguf, numpy, jinja2) are imported inside the commands
so that `hydra-compose --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import present
from .errors import HydraError
from .runtime.signals import sigterm_as_interrupt

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Turn mixed GPU and CPU machines into one OpenAI-compatible llama.cpp endpoint.")

_state: dict[str, Optional[Path]] = {"config": None}


def _project():  # noqa: ANN202
    from .commands.context import open_project
    from .inventory.config import config_path

    return open_project(config_path(_state["config"]))


@app.callback()
def main(config: Optional[Path] = typer.Option(
        None, "-c", "--config", envvar="HYDRA_CONFIG", help="cluster.yaml to use (default ./cluster.yaml).")) -> None:
    _state["config"] = config


@app.command()
def init() -> None:
    """Write the CPU-default cluster.yaml and models/ here (never overwrites)."""
    from .commands import init as cmd

    present.init(cmd.run(Path.cwd()))


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the GGUF models in models/ (read from their headers only)."""
    from .commands import models as cmd
    from .inventory.config import config_path

    models_dir = config_path(_state["config"]).resolve().parent / "models"
    facts = cmd.run(models_dir)
    if as_json:
        present.print_json({"version": 1, "models": [m.to_json() for m in facts]})
    else:
        present.models(facts, models_dir)


def _plan_overrides(ctx, parallel, cache_type_k, cache_type_v, flash_attn, split, experts=None,  # noqa: ANN001
                    speculative=None) -> dict:
    from .inventory.config import CACHE_TYPES
    from .errors import UsageError

    for name, value in (("--cache-type-k", cache_type_k), ("--cache-type-v", cache_type_v)):
        if value is not None and value not in CACHE_TYPES:
            raise UsageError(f"{name} {value} is not a KV cache type", f"use one of {', '.join(CACHE_TYPES)}")
    if split is not None and split not in ("speed", "all"):
        raise UsageError(f"--split {split} is unknown", "use speed or all")
    if experts is not None and experts not in ("auto", "gpu", "cpu"):
        raise UsageError(f"--experts {experts} is unknown", "use auto, gpu or cpu")
    if speculative is not None and speculative not in ("auto", "off", "draft", "mtp", "ngram"):
        raise UsageError(f"--speculative {speculative} is unknown", "use auto, off, draft, mtp or ngram")
    return dict(ctx=ctx, parallel=parallel, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                flash_attn=flash_attn, split=split, experts=experts, speculative=speculative)


_MODEL = typer.Option(None, "-m", "--model", help="Model name from cluster.yaml or a .gguf in models/.")
_CTX = typer.Option(None, "--ctx", min=256, help="Total context (all slots); default: the largest that fits.")
_PAR = typer.Option(None, "--parallel", min=1, help="Parallel slots (each gets ctx/parallel tokens).")
_CTK = typer.Option(None, "--cache-type-k", help="KV cache type for K (f16, q8_0, q4_0, ...).")
_CTV = typer.Option(None, "--cache-type-v", help="KV cache type for V (quantized needs flash attention).")
_FA = typer.Option(None, "--flash-attn/--no-flash-attn", help="Flash attention.")
_SPLIT = typer.Option(None, "--split", help="speed: fastest split, may leave devices out; all: use every device.")
_EXPERTS = typer.Option(None, "--experts", help="MoE experts: auto (host RAM only when needed), gpu, cpu.")
_SPEC = typer.Option(None, "--speculative", help="Speculative decoding: auto (when predicted faster), off, draft, "
                                                 "mtp, ngram.")


@app.command()
def plan(model: Optional[str] = _MODEL, ctx: Optional[int] = _CTX, parallel: Optional[int] = _PAR,
         cache_type_k: Optional[str] = _CTK, cache_type_v: Optional[str] = _CTV,
         flash_attn: Optional[bool] = _FA, split: Optional[str] = _SPLIT, experts: Optional[str] = _EXPERTS,
         speculative: Optional[str] = _SPEC,
         compare: bool = typer.Option(False, "--compare", help="List the candidate plans, best first, and why the "
                                                               "chosen one wins."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (versioned).")) -> None:
    """Place the model's layers on the devices: memory per device, context, predicted tok/s."""
    from .commands import plan as cmd

    overrides = _plan_overrides(ctx, parallel, cache_type_k, cache_type_v, flash_attn, split, experts, speculative)
    if compare:
        table = cmd.compare(_project(), model, **overrides)
        if as_json:
            present.print_json(cmd.compare_json(table))
        else:
            present.compare(table)
        return
    project = _project()
    if model is None and project.config.served_models:
        router = cmd.run_router(project, **overrides)
        if as_json:
            present.print_json(cmd.router_json(router))
        else:
            present.router(router)
        return
    name, result, fallbacks = cmd.run(project, model, **overrides)
    replicas = cmd.run_replicas(project, model, **overrides)
    if replicas and replicas.chosen.replicas > 1:
        result, fallbacks = replicas.plans[0], []  # one replica's plan; the balancer stands in for fallbacks
    if as_json:
        present.print_json({**cmd.to_json(name, result, fallbacks),
                            **({"replicas": cmd.replicas_json(replicas)} if replicas else {})})
    else:
        present.plan(name, result, fallbacks)
        if replicas:
            present.replica_choices(replicas)


@app.command()
def generate(model: Optional[str] = _MODEL,
             out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output directory (default: next to cluster.yaml)."),
             force: bool = typer.Option(False, "--force", help="Overwrite generated files edited by hand."),
             ctx: Optional[int] = _CTX, parallel: Optional[int] = _PAR, cache_type_k: Optional[str] = _CTK,
             cache_type_v: Optional[str] = _CTV, flash_attn: Optional[bool] = _FA,
             split: Optional[str] = _SPLIT, experts: Optional[str] = _EXPERTS,
             speculative: Optional[str] = _SPEC,
             rotate_certs: bool = typer.Option(False, "--rotate-certs", help="With rpc_tls: a new cluster CA and "
                                                                             "new host certificates."),
             target: Optional[str] = typer.Option(None, "--target", help="compose (a compose file per host) or "
                                                  "kubernetes (k8s/ for kubectl apply -k); default: cluster.target.")
             ) -> None:
    """Write dockerfiles/ and compose/<host>/docker-compose.yml for every host (or k8s/ for Kubernetes)."""
    from .commands import generate as cmd

    from .errors import UsageError

    overrides = _plan_overrides(ctx, parallel, cache_type_k, cache_type_v, flash_attn, split, experts, speculative)
    if target is not None and target not in ("compose", "kubernetes"):
        raise UsageError(f"--target {target} is unknown", "use compose or kubernetes")
    present.generate(cmd.run(_project(), model, out, force, rotate_certs, target, **overrides))


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

        present.print_json(to_json(list(r.reports), list(r.errors)))
    else:
        present.inspect(r)
    present.inspect_errors(r.errors)
    if r.errors:
        raise typer.Exit(1)


_HOSTS = typer.Argument(None, help="Hosts of cluster.yaml (default: all).")


@app.command()
def up(hosts: Optional[list[str]] = _HOSTS,
       no_build: bool = typer.Option(False, "--no-build", help="Use the images already built.")) -> None:
    """Start the generated stacks: workers first, then the master."""
    from .commands import up as cmd

    cmd.run(_project(), hosts, present.line, build=not no_build)


@app.command()
def down(hosts: Optional[list[str]] = _HOSTS,
         volumes: bool = typer.Option(False, "-v", "--volumes", help="Also remove the workers' tensor caches.")) -> None:
    """Stop the stacks: the master first, then the workers."""
    from .commands import down as cmd

    cmd.run(_project(), hosts, present.line, volumes)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON (versioned)."),
           watch: Optional[float] = typer.Option(None, "--watch", min=1, max=3600,
                                                 help="Refresh every this many seconds, like top (Ctrl-C ends).")
           ) -> None:
    """Workers (container, port, llama.cpp ref), master (health, model, slots, tok/s), each device's
    planned vs used memory, load, power and temperature; warnings."""
    import time

    from .commands import status as cmd
    from .commands.bench import master_api_key

    project = _project()
    key = master_api_key(project)
    while True:
        st = cmd.run(project, key)
        if watch:
            present.console().clear()
        if as_json:
            present.print_json(st.to_json())
        else:
            present.status(st)
        if not watch:
            break
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
    if st.warnings and not st.master.healthy:
        raise typer.Exit(1)


@app.command()
def calibrate(hosts: Optional[list[str]] = _HOSTS,
              as_json: bool = typer.Option(False, "--json", help="Print JSON (versioned).")) -> None:
    """Measure each device (in its worker image) and each link (from the master); record them in cluster.yaml."""
    from .commands import calibrate as cmd

    with present.steps(hidden=as_json) as step:
        r = cmd.run(_project(), hosts, step)
    if as_json:
        present.print_json(cmd.to_json(r))
    else:
        present.calibrate(r)
    if any(d.error for d in r.devices) or any(link.error for link in r.links):
        raise typer.Exit(1)


@app.command()
def swap(model: str = typer.Argument(..., help="Model name from cluster.yaml or a .gguf in models/.")) -> None:
    """Plan and regenerate for another model, restart only the master (workers keep running)."""
    from .commands import swap as cmd

    present.swap(cmd.run(_project(), model, present.line))


@app.command()
def logs(host: Optional[str] = typer.Argument(None, help="Host (default: the master's)."),
         service: Optional[str] = typer.Argument(None, help="Service, e.g. llama-server or rpc-cpu0."),
         follow: bool = typer.Option(True, "--follow/--no-follow", "-f", help="Keep following.")) -> None:
    """Show a host's container logs through compose."""
    from .commands import logs as cmd

    project = _project()
    raise typer.Exit(cmd.run(project, host or project.config.master.host, service, follow))


keys_app = typer.Typer(help="Users' API keys of the master: add, list, revoke (kept in its 0600 .env, never "
                                 "printed).", rich_markup_mode=None, no_args_is_help=True)
app.add_typer(keys_app, name="keys")
_APPLY = typer.Option(True, "--apply/--no-apply", help="Restart llama-server (alone) so the change takes effect now.")
_KEYS_JSON = typer.Option(False, "--json", help="Print JSON (versioned).")


def _keys_out(r, as_json: bool) -> None:  # noqa: ANN001
    present.print_json(r.to_json()) if as_json else present.keys(r)


@keys_app.command("list")
def keys_list(as_json: bool = _KEYS_JSON) -> None:
    """Names and fingerprints of the users' keys (the keys themselves are in the master's .env)."""
    from .commands import keys as cmd

    _keys_out(cmd.list_keys(_project()), as_json)


@keys_app.command("add")
def keys_add(name: str = typer.Argument(..., help="A name for the key, e.g. alice."), apply: bool = _APPLY,
             as_json: bool = _KEYS_JSON) -> None:
    """Make a new key NAME in the master's .env (read it there: it is never printed)."""
    from .commands import keys as cmd

    _keys_out(cmd.add(_project(), name, apply), as_json)


@keys_app.command("revoke")
def keys_revoke(name: str = typer.Argument(..., help="The key's name."), apply: bool = _APPLY,
                as_json: bool = _KEYS_JSON) -> None:
    """Remove key NAME: with --apply (default) it gets 401 from the moment llama-server restarts."""
    from .commands import keys as cmd

    _keys_out(cmd.revoke(_project(), name, apply), as_json)


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


_LEVELS = typer.Option("1", "--concurrency", help="Parallel streams (for --parallel slots); several, e.g. 1,4,8, "
                                                 "sweep them: throughput and p99 latency per level.")


def _bench_options(url, model, runs, max_tokens, prompt_tokens, concurrency, timeout):  # noqa: ANN001, ANN202
    from .commands import bench as cmd

    # the project also says whether --url is the cluster's own master (the only place its key may go)
    try:
        project = _optional_project()
    except HydraError:
        if url is None or model is None:
            raise
        project = None  # a broken cluster.yaml next door does not stop a benchmark of another server
    return cmd.options(project, url, model, runs=runs, max_tokens=max_tokens, prompt_tokens=prompt_tokens,
                       concurrency=concurrency, timeout_s=timeout)


@bench_app.callback()
def bench(ctx: typer.Context, url: Optional[str] = _URL, model: Optional[str] = _BMODEL, runs: int = _RUNS,
          max_tokens: int = _MAXT, prompt_tokens: int = _PTOK, concurrency: str = _LEVELS, timeout: float = _TIMEOUT,
          as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (versioned)."),
          out: Optional[Path] = typer.Option(None, "--out", help="Write bench.json and bench.csv here (and with "
                                             "several --concurrency levels latency.csv and a plot).")) -> None:
    """Stream long generations: TTFT, decode and prompt tok/s (client and server), p50/p90/p99 latency."""
    if ctx.invoked_subcommand:
        return
    from .commands import bench as cmd

    levels = cmd.parse_levels(concurrency)
    opts = _bench_options(url, model, runs, max_tokens, prompt_tokens, levels[0], timeout)
    with present.progress(f"{opts.model} @ {opts.url}", runs * sum(levels), hidden=as_json) as advance:
        results = cmd.run_levels(opts, levels, advance)
    if out and all(r.runs for r in results):
        cmd.write_bench(results, out)
    if as_json:
        present.print_json(results[0].to_json() if len(results) == 1 else cmd.sweep_json(results))
    else:
        for r in results:
            present.bench(r)
        if len(results) > 1:
            present.bench_levels([r.level() for r in results])
    cmd.check_all(results)


@bench_app.command("power-sweep")
def power_sweep(gpu: list[str] = typer.Option(..., "--gpu", help="HOST:INDEX, HOST:VENDOR:INDEX or HOST:BUS_ID "
                                               "(a cluster.yaml host or local); repeatable."),
                limits: str = typer.Option(..., "--limits", help="Comma-separated watts, e.g. 160,190,225."),
                out: Path = typer.Option(..., "--out", help="Directory for CSV, JSON, Markdown and PNG plots."),
                settle: float = typer.Option(3.0, "--settle", min=0, help="Seconds to wait after setting a limit."),
                url: Optional[str] = _URL, model: Optional[str] = _BMODEL, runs: int = _RUNS,
                max_tokens: int = _MAXT, prompt_tokens: int = _PTOK, concurrency: int = _CONC,
                timeout: float = _TIMEOUT) -> None:
    """Benchmark at each power limit; the original limits are always restored."""
    from .commands import bench as cmd
    from .runtime.power import SweepState

    watts = cmd.parse_limits(limits)
    opts = _bench_options(url, model, runs, max_tokens, prompt_tokens, concurrency, timeout)
    gpus = cmd.gpus_for(_optional_project(), gpu)
    state = SweepState()
    try:
        rows = cmd.power_sweep(gpus, watts, opts, settle, on_step=present.line, state=state)
    except KeyboardInterrupt:
        present.error(cmd.interrupted(state))
        raise typer.Exit(130) from None
    paths = cmd.write_sweep(rows, out)
    present.sweep(paths, (out / "sweep.md").read_text())


def cli() -> None:
    # Typer's standalone mode prints usage errors itself (exit 2); our own error
    # family is caught here, once, and printed as one line.
    sigterm_as_interrupt()  # SIGTERM cleans up like Ctrl-C (Click then prints "Aborted!")
    try:
        app()
    except HydraError as exc:
        present.error(exc)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the last net: a file-system failure no command anticipated is still one line
        present.error(HydraError(f"{exc.filename or 'a file'}: {exc.strerror or exc}",
                                 "check the path, its permissions and free space"))
        sys.exit(1)


if __name__ == "__main__":
    cli()
