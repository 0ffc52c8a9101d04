"""Power sweeps against stand-in nvidia-smi / amd-smi that keep state and record calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run_cli
from support.fake_server import FakeLlama

STANDINS = Path(__file__).parent / "support" / "standins"


@pytest.fixture
def gpu_state(tmp_path, monkeypatch):
    state = tmp_path / "gpu.json"
    state.write_text(json.dumps({"gpus": {"0": {"name": "NVIDIA GeForce RTX 3090", "limit": 350.0, "min": 100.0,
                                                "max": 400.0}}}))
    log = tmp_path / "calls.log"
    log.touch()
    env = {"FAKE_GPU_STATE": str(state), "FAKE_GPU_LOG": str(log),
           "PATH": f"{STANDINS}{os.pathsep}{os.environ['PATH']}"}
    return state, log, env


def limit(state: Path) -> float:
    return json.loads(state.read_text())["gpus"]["0"]["limit"]


def sweep_args(url: str, out: Path, limits: str = "200,300") -> list[str]:
    return ["bench", "power-sweep", "--gpu", "local:0", "--limits", limits, "--out", str(out), "--settle", "0",
            "--url", url, "--model", "m", "--runs", "1", "--max-tokens", "20"]


def test_sweep_writes_table_and_plots_and_restores(gpu_state, tmp_path):
    state, log, env = gpu_state
    server = FakeLlama(state)
    try:
        r = run_cli(*sweep_args(server.url, tmp_path / "out"), cwd=tmp_path, env=env)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert limit(state) == 350.0
    calls = [c for c in log.read_text().splitlines() if "power.draw" not in c and c != "nvidia-smi -L"]
    sets = [c.split("-pl ")[1] for c in calls if "-pl" in c]
    assert sets == ["200", "300", "350"]  # each limit, then the original
    assert calls[-1].endswith("--query-gpu=power.limit,power.min_limit,power.max_limit --format=csv,noheader,nounits")
    assert calls[0].endswith("--query-gpu=power.limit,power.min_limit,power.max_limit --format=csv,noheader,nounits")
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())["rows"]
    assert [r["limit_w"] for r in rows] == [200.0, 300.0]
    assert rows[1]["tg_tokens_per_s"] > rows[0]["tg_tokens_per_s"]  # the stand-in is faster at 300 W
    assert rows[0]["avg_power_w"] == pytest.approx(147.0) and rows[0]["max_temp_c"] == 60
    for name in ("sweep.csv", "sweep.md", "tokps_vs_power_limit.png", "tokps_per_watt_vs_power_limit.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "| local:nvidia:0 | 200 W |" in (tmp_path / "out" / "sweep.md").read_text()


def test_restores_after_error_in_a_run(gpu_state, tmp_path):
    state, log, env = gpu_state
    server = FakeLlama(state, fail_after=1)
    try:
        r = run_cli(*sweep_args(server.url, tmp_path / "out"), cwd=tmp_path, env=env)
    finally:
        server.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "500" in r.stderr
    assert limit(state) == 350.0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_restores_after_signal_mid_sweep(sig, gpu_state, tmp_path):
    state, log, env = gpu_state
    server = FakeLlama(state, delay_s=30)
    try:
        proc = subprocess.Popen(["hydra-compose", *sweep_args(server.url, tmp_path / "out")], cwd=tmp_path,
                                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while limit(state) != 200.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        server.close()
    assert proc.returncode == 130, err
    assert "restored" in err and "Traceback" not in err
    assert limit(state) == 350.0


def test_out_of_range_limit_touches_nothing(gpu_state, tmp_path):
    state, log, env = gpu_state
    r = run_cli(*sweep_args("http://127.0.0.1:9", tmp_path / "out", limits="200,450"), cwd=tmp_path, env=env)
    assert r.returncode == 1 and "outside the card's range 100-400 W" in r.stderr
    assert "-pl" not in log.read_text()
    assert limit(state) == 350.0


def test_missing_root_is_a_clear_error(gpu_state, tmp_path):
    state, log, env = gpu_state
    r = run_cli(*sweep_args("http://127.0.0.1:9", tmp_path / "out"), cwd=tmp_path,
                env={**env, "FAKE_GPU_NOROOT": "1"})
    assert r.returncode == 1 and "needs root" in r.stderr and "Traceback" not in r.stderr
    assert limit(state) == 350.0


def test_amd_sweep(tmp_path, gpu_state):
    state, log, env = gpu_state
    state.write_text(json.dumps({"gpus": {"0": {"name": "MI50", "limit": 225.0, "min": 100.0, "max": 300.0}}}))
    hidden = tmp_path / "nonvidia"
    hidden.mkdir()
    (hidden / "amd-smi").symlink_to(STANDINS / "amd-smi")
    env = {**env, "PATH": f"{hidden}{os.pathsep}/usr/bin:/bin:{Path(os.sys.executable).parent}"}
    server = FakeLlama(state)
    try:
        r = run_cli(*sweep_args(server.url, tmp_path / "out", limits="160,225"), cwd=tmp_path, env=env)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert limit(state) == 225.0
    assert "amd-smi set -g 0 --power-cap 160" in log.read_text()
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())["rows"]
    assert rows[0]["avg_power_w"] == pytest.approx(155.0)


def test_bench_against_stand_in_server(tmp_path):
    server = FakeLlama()
    try:
        r = run_cli("bench", "--url", server.url, "--model", "m", "--runs", "2", "--max-tokens", "30", "--json",
                    "--out", str(tmp_path / "b"), cwd=tmp_path)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["version"] == 1 and len(data["runs"]) == 2
    assert set(data["runs"][0]) >= {"ttft_s", "tg_tokens_per_s", "pp_tokens_per_s", "server_tg_tokens_per_s",
                                    "completion_tokens"}
    assert data["summary"]["tg_tokens_per_s"]["median"] > 0
    assert (tmp_path / "b" / "bench.csv").exists()


def test_bench_unreachable(tmp_path):
    r = run_cli("bench", "--url", "http://127.0.0.1:9", "--model", "m", cwd=tmp_path)
    assert r.returncode == 1 and "cannot reach" in r.stderr and "Traceback" not in r.stderr
