"""bench latency: p50/p90/p99 of TTFT and inter-token latency per run, across runs and across
concurrency levels, in the JSON, the CSVs and the plot (against a stand-in server whose token
spacing is known)."""

from __future__ import annotations

import csv
import json
import random

import pytest

from conftest import run_cli
from support.fake_server import FakeLlama

from hydra_compose.runtime.benchmark import percentile


def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    for n in (1, 2, 5, 100, 1001):
        values = [rng.uniform(0, 100) for _ in range(n)]
        for p in (0, 50, 90, 99, 100):
            assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))
    assert percentile([], 50) is None


def test_latency_percentiles_follow_the_servers_token_spacing(tmp_path):
    server = FakeLlama()  # 40 tok/s: a token every 25 ms
    try:
        r = run_cli("bench", "--url", server.url, "--model", "m", "--runs", "2", "--max-tokens", "24", "--json",
                    cwd=tmp_path)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for run in data["runs"]:
        assert 20 <= run["itl_p50_ms"] <= 40, run
        assert run["itl_p50_ms"] <= run["itl_p90_ms"] <= run["itl_p99_ms"]
        assert "itl_ms" not in run  # the gaps themselves stay out of the output
    s = data["summary"]
    assert 20 <= s["itl_ms"]["p50"] <= 40 and s["itl_ms"]["p99"] >= s["itl_ms"]["p50"]
    assert s["ttft_ms"]["p50"] == pytest.approx(1000 * sorted(x["ttft_s"] for x in data["runs"])[0], rel=0.6)


def test_concurrency_levels_write_latency_csv_and_plot(tmp_path):
    server = FakeLlama(delay_s=0.05)
    out = tmp_path / "out"
    try:
        r = run_cli("bench", "--url", server.url, "--model", "m", "--runs", "2", "--max-tokens", "12",
                    "--concurrency", "2,1", "--out", str(out), cwd=tmp_path)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert "inter-token p99 ms" in r.stdout.replace("\n", " ") or "inter-token" in r.stdout
    levels = list(csv.DictReader((out / "latency.csv").open()))
    assert [int(lv["concurrency"]) for lv in levels] == [1, 2]
    for lv in levels:
        assert int(lv["errors"]) == 0 and float(lv["ttft_p99_ms"]) >= 50  # the server's 50 ms before the first token
        assert float(lv["itl_p99_ms"]) >= float(lv["itl_p50_ms"]) > 0
    # two streams at once: about twice the tokens per second of one
    assert float(levels[1]["aggregate_tokens_per_s"]) > 1.5 * float(levels[0]["aggregate_tokens_per_s"])
    runs = list(csv.DictReader((out / "bench.csv").open()))
    assert sorted(int(x["concurrency"]) for x in runs) == [1, 1, 2, 2, 2, 2]
    doc = json.loads((out / "bench.json").read_text())
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 2] and len(doc["results"]) == 2
    png = (out / "tokps_and_p99_vs_concurrency.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


@pytest.mark.parametrize("levels", ["0", "1,x", "300", ",", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"])
def test_bad_concurrency_is_one_line(tmp_path, levels):
    r = run_cli("bench", "--url", "http://127.0.0.1:9", "--model", "m", "--concurrency", levels, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--concurrency" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
