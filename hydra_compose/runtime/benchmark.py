"""Long-generation benchmark against an OpenAI-compatible llama-server.

Each run streams one chat completion forced to full length (llama-server's
`ignore_eos`) and times it on the client: TTFT, and decode tok/s = tokens after
the first / time from the first to the last token — the same quantity llama-server
reports as `predicted_per_second`, so the two can be compared.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

import httpx

from ..errors import BenchError
from .http import Deadline, error_text, get, lines, parse_json

FILLER = "The quick brown fox jumps over the lazy dog while the river keeps flowing to the sea. "


@dataclass(frozen=True)
class BenchOptions:
    url: str
    model: str
    runs: int = 3
    max_tokens: int = 2048
    prompt_tokens: int = 128
    concurrency: int = 1
    api_key: str | None = None
    timeout_s: float = 600.0


@dataclass(frozen=True)
class RunResult:
    ttft_s: float
    tg_tokens_per_s: float
    pp_tokens_per_s: float | None
    server_tg_tokens_per_s: float | None
    completion_tokens: int
    stream: int = 0
    draft_tokens: int | None = None  # speculative decoding: tokens the draft proposed (llama-server's draft_n)
    draft_accepted: int | None = None  # and how many the target kept (draft_n_accepted)
    itl_p50_ms: float | None = None  # inter-token latency: the gaps between streamed tokens of this run
    itl_p90_ms: float | None = None
    itl_p99_ms: float | None = None
    itl_ms: tuple[float, ...] = field(default=(), repr=False)  # every gap (pooled across runs; not written out)

    def row(self) -> dict:
        """This run as JSON/CSV carry it (the gaps themselves stay out: percentiles stand for them)."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items() if k != "itl_ms"}


PERCENTILES = (50, 90, 99)


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile, linear between the closest ranks (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def percentiles(values: list[float]) -> dict:
    return {f"p{p}": (None if (x := percentile(values, p)) is None else round(x, 3)) for p in PERCENTILES}


@dataclass(frozen=True)
class BenchResult:
    options: BenchOptions
    runs: tuple[RunResult, ...]
    errors: int
    wall_s: float

    def summary(self) -> dict:
        def stats(values: list[float]) -> dict:
            return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                    "max": round(max(values), 3)} if values else {"median": None, "min": None, "max": None}

        out = {"tg_tokens_per_s": stats([r.tg_tokens_per_s for r in self.runs]),
               "ttft_s": stats([r.ttft_s for r in self.runs]),
               # latency as serving benchmarks report it: TTFT over runs, the gaps between tokens pooled
               "ttft_ms": percentiles([1000 * r.ttft_s for r in self.runs]),
               "itl_ms": percentiles([g for r in self.runs for g in r.itl_ms]),
               "pp_tokens_per_s": stats([r.pp_tokens_per_s for r in self.runs if r.pp_tokens_per_s]),
               "server_tg_tokens_per_s": stats([r.server_tg_tokens_per_s for r in self.runs
                                                if r.server_tg_tokens_per_s])}
        drafted = sum(r.draft_tokens or 0 for r in self.runs)
        if drafted:
            accepted = sum(r.draft_accepted or 0 for r in self.runs)
            passes = sum(r.completion_tokens for r in self.runs if r.draft_tokens) - accepted
            out["draft"] = {"drafted": drafted, "accepted": accepted, "acceptance_rate": round(accepted / drafted, 3),
                            # tokens per target pass, its own included: what plan's `acceptance` means
                            "acceptance_length": round((passes + accepted) / passes, 2) if passes > 0 else None}
        if self.options.concurrency > 1 and self.wall_s > 0:
            out["aggregate_tokens_per_s"] = round(sum(r.completion_tokens for r in self.runs) / self.wall_s, 2)
        out["errors"] = self.errors
        return out

    def to_json(self) -> dict:
        o = self.options
        return {"version": 1, "url": o.url, "model": o.model, "concurrency": o.concurrency,
                "max_tokens": o.max_tokens, "runs": [r.row() for r in self.runs], "summary": self.summary()}

    def level(self) -> dict:
        """One row of a concurrency sweep: throughput and tail latency at this many streams."""
        s = self.summary()
        # tokens of all streams over the wall time, at every level (1 included), so levels compare
        agg = round(sum(r.completion_tokens for r in self.runs) / self.wall_s, 2) if self.wall_s > 0 else None
        return {"concurrency": self.options.concurrency, "runs": len(self.runs), "errors": self.errors,
                "aggregate_tokens_per_s": agg, "tg_tokens_per_s_median": s["tg_tokens_per_s"]["median"],
                **{f"ttft_{k}_ms": v for k, v in s["ttft_ms"].items()},
                **{f"itl_{k}_ms": v for k, v in s["itl_ms"].items()}}


def _prompt(tokens: int) -> str:
    # ~19 tokens per filler sentence for common tokenizers
    return (FILLER * max(1, tokens // 19 + 1))[: max(16, tokens * 4)] + "\nContinue the story."


def run_once(client: httpx.Client, opts: BenchOptions, stream_id: int = 0) -> RunResult:
    body = {"model": opts.model, "stream": True, "max_tokens": opts.max_tokens, "ignore_eos": True,
            "temperature": 0.7, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": _prompt(opts.prompt_tokens)}]}
    deadline = Deadline(opts.timeout_s)  # the whole generation, however slowly the server trickles
    url = f"{opts.url}/v1/chat/completions"
    start = time.perf_counter()
    first = last = None
    chunks = 0
    stamps: list[float] = []
    timings: dict = {}
    usage: dict = {}
    # a stream queued behind busy slots hears nothing until one frees: only --timeout bounds that wait
    wait = httpx.Timeout(max(0.05, deadline.left()))
    with client.stream("POST", "/v1/chat/completions", json=body, timeout=wait) as resp:
        if resp.status_code != 200:
            text = error_text(resp, deadline, url)
            hint = ("the cluster's key is sent to its own master only; for another server set HYDRA_API_KEY"
                    if resp.status_code == 401 else "check --url, --model and the API key")
            raise BenchError(f"{opts.url} answered {resp.status_code}: {text[:120]}", hint)
        for line in lines(resp, deadline, url):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = _chunk(line[6:], opts.url)
            timings = data.get("timings") or timings
            usage = data.get("usage") or usage
            for choice in data.get("choices") or []:
                if isinstance(choice, dict) and isinstance(choice.get("delta"), dict) and choice["delta"].get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
                    stamps.append(now)
    if first is None or last is None:
        raise BenchError(f"{opts.url} streamed no tokens", "check that the model loaded (/health, /v1/models)")
    tokens = int(_number(usage.get("completion_tokens")) or _number(timings.get("predicted_n")) or chunks)
    if tokens < 2 or last <= first:
        raise BenchError(f"{opts.url} streamed {tokens} token(s): too few to time decoding",
                         "raise --max-tokens, or check that the server honours ignore_eos")
    decode = (tokens - 1) / (last - first)
    gaps = tuple(1000 * (b - a) for a, b in zip(stamps, stamps[1:]))
    itl = [percentile(list(gaps), p) for p in PERCENTILES]
    return RunResult(itl_p50_ms=itl[0], itl_p90_ms=itl[1], itl_p99_ms=itl[2], itl_ms=gaps,
                     ttft_s=first - start, tg_tokens_per_s=decode, pp_tokens_per_s=_number(timings.get("prompt_per_second")),
                     server_tg_tokens_per_s=_number(timings.get("predicted_per_second")), completion_tokens=tokens,
                     stream=stream_id, draft_tokens=_count(timings.get("draft_n")),
                     draft_accepted=_count(timings.get("draft_n_accepted")))


def _chunk(text: str, url: str) -> dict:
    """One streamed event: a JSON object with dict fields, or a one-line error."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BenchError(f"{url} streamed something that is not JSON: {text[:60]!r}",
                         "point --url at an OpenAI-compatible server (llama-server)") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k) or {}, dict) for k in ("timings", "usage")):
        raise BenchError(f"{url} streamed an unexpected event: {text[:60]!r}",
                         "point --url at an OpenAI-compatible server (llama-server)")
    if "error" in data:
        raise BenchError(f"{url} reported an error: {str(data['error'])[:100]}", "check the server's log")
    return data


def _number(value: object) -> float | None:
    """A finite, non-negative number from a server's JSON, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e12:
        return None
    return float(value)


def _count(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


MAX_MODELS = 1000  # what a /v1/models answer may list before we stop looking


def model_id(payload: object) -> str | None:
    """The first model a /v1/models answer lists, if it is well formed."""
    data = payload.get("data") if isinstance(payload, dict) else None
    first = data[0] if isinstance(data, list) and data else None
    mid = first.get("id") if isinstance(first, dict) else None
    return mid[:200] if isinstance(mid, str) and mid else None


def served_model(url: str, api_key: str | None, timeout_s: float) -> str:
    """The model a server answers to, from its /v1/models (bounded: time, size, entries)."""
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=auth_headers(api_key)) as client:
            status, body = get(client, "/v1/models", min(timeout_s, 60))
    except httpx.HTTPError:
        raise BenchError(f"cannot reach {url}", "start the cluster (hydra-compose up) or check --url") from None
    if status != 200:
        hint = ("the cluster's key goes to its own master only; for another server set HYDRA_API_KEY"
                if status == 401 else "check --url and the API key, or pass --model")
        raise BenchError(f"{url}/v1/models answered {status}", hint)
    payload = parse_json(body, f"{url}/v1/models")
    if isinstance(payload, dict) and isinstance(payload.get("data"), list):
        payload = {"data": payload["data"][:MAX_MODELS]}
    model = model_id(payload)
    if model is None:
        raise BenchError(f"{url}/v1/models did not list a model", "pass --model NAME")
    return model


def run_benchmark(opts: BenchOptions, progress: Callable[[int], None] | None = None) -> BenchResult:
    headers = auth_headers(opts.api_key)
    results: list[RunResult] = []
    errors = 0
    lock = threading.Lock()
    run_deadline = Deadline(opts.timeout_s * opts.runs + 30)  # the whole benchmark, not only each request

    def one(i: int) -> None:
        nonlocal errors
        if run_deadline.left() <= 0:
            with lock:
                errors += 1
            return
        with httpx.Client(base_url=opts.url, headers=headers, timeout=opts.timeout_s) as client:
            try:
                r = run_once(client, opts, i % opts.concurrency)
            except (httpx.HTTPError, json.JSONDecodeError, BenchError) as exc:
                if isinstance(exc, httpx.ConnectError) and opts.concurrency == 1:
                    raise BenchError(f"cannot reach {opts.url}", "start the cluster (docker compose up) or pass --url") from None
                if isinstance(exc, BenchError) and opts.concurrency == 1:
                    raise
                with lock:
                    errors += 1
                return
        with lock:
            results.append(r)
        if progress:
            progress(1)

    start = time.perf_counter()
    if opts.concurrency == 1:
        for i in range(opts.runs):
            one(i)
    else:
        with ThreadPoolExecutor(opts.concurrency) as pool:
            list(pool.map(one, range(opts.runs * opts.concurrency)))
    return BenchResult(opts, tuple(results), errors, time.perf_counter() - start)
