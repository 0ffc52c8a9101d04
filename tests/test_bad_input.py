"""Every user mistake: one line naming the cause and the fix, exit code != 0, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

GOOD = (ROOT / "examples" / "cpu-default.yaml").read_text()
MODEL_LINE = "  smollm2: {file: SmolLM2-135M-Instruct.Q4_1.gguf, ctx: 4096, parallel: 2, split: all, default: true}"


def project(tmp_path: Path, model_dir: Path, text: str, model: str = "gqa-q8.gguf") -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    shutil.copy(model_dir / "gqa-q8.gguf", tmp_path / "models" / "gqa-q8.gguf")
    (tmp_path / "cluster.yaml").write_text(text.replace(MODEL_LINE, f"  m: {{file: {model}, default: true}}"))
    return tmp_path


CASES = {
    "yaml syntax": (GOOD.replace("port: 8080", "port: [8080"), ["plan"], "line"),
    "unknown key": (GOOD.replace("port: 8080", "port: 8080\n  prot: 1"), ["plan"], "master.prot: unknown key"),
    "wrong type": (GOOD.replace("port: 8080", "port: eighty"), ["plan"], "master.port"),
    "negative memory": (GOOD.replace("memory_gb: 4, threads: 2, rpc_port: 50052", "memory_gb: -4, threads: 2, rpc_port: 50052"),
                        ["plan"], "hosts[0].devices[0].memory_gb"),
    "zero memory": (GOOD.replace("memory_gb: 4, threads: 2, rpc_port: 50053", "memory_gb: 0, threads: 2, rpc_port: 50053"),
                    ["plan"], "hosts[0].devices[1].memory_gb"),
    "duplicate host": (GOOD.replace("hosts:\n", "hosts:\n  - {name: local, address: 127.0.0.9}\n"), ["plan"],
                       "used twice"),
    "duplicate port": (GOOD.replace("rpc_port: 50053", "rpc_port: 50052"), ["plan"], "already used"),
    "master not a host": (GOOD.replace("host: local", "host: elsewhere"), ["plan"], "not one of the hosts"),
    "unknown vendor": (GOOD.replace("vendor: cpu, memory_gb: 4, threads: 2, rpc_port: 50052",
                                    "vendor: intel, vram_gb: 4"), ["plan"], "vendor"),
    "unknown arch": (GOOD.replace("vendor: cpu, memory_gb: 4, threads: 2, rpc_port: 50052",
                                  "vendor: nvidia, vram_gb: 8, arch: ampere"), ["plan"], "unknown nvidia arch"),
    "gpu with memory_gb": (GOOD.replace("vendor: cpu, memory_gb: 4, threads: 2, rpc_port: 50052",
                                        "vendor: amd, memory_gb: 8, arch: gfx1100"), ["plan"], "vram_gb"),
    "reserve above memory": (GOOD.replace("threads: 2, rpc_port: 50053", "threads: 2, rpc_port: 50053, reserve_gb: 9"),
                             ["plan"], "reserve_gb"),
    "port collides with master": (GOOD.replace("rpc_port: 50053", "rpc_port: 8080"), ["plan"], "collides"),
    "bad cluster name": (GOOD.replace("name: hydra", "name: My Cluster"), ["plan"], "cluster.name"),
    "not a mapping": ("- just\n- a list\n", ["plan"], "expected a mapping"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config(case, tmp_path, model_dir):
    text, args, expected = CASES[case]
    project(tmp_path, model_dir, text)
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    assert " — " in err  # the fix follows the cause


def check_fails(r, expected: str, code: int = 1) -> None:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert expected in r.stderr, r.stderr


def test_missing_config(tmp_path):
    check_fails(run_cli("plan", cwd=tmp_path), "cluster.yaml not found")


def test_missing_model_file(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD, model="nope.gguf")
    check_fails(run_cli("plan", cwd=tmp_path), "nope.gguf not found")
    check_fails(run_cli("generate", cwd=tmp_path), "nope.gguf not found")
    assert not (tmp_path / "compose").exists()


def test_unknown_model_name(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD)
    check_fails(run_cli("plan", "-m", "llama-9000", cwd=tmp_path), "not in cluster.yaml")


def test_non_gguf_file(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD, model="junk.gguf")
    (tmp_path / "models" / "junk.gguf").write_bytes(b"this is not a model" * 100)
    check_fails(run_cli("plan", cwd=tmp_path), "not a readable GGUF")
    check_fails(run_cli("models", cwd=tmp_path), "not a readable GGUF")


def test_truncated_gguf(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD, model="cut.gguf")
    data = (model_dir / "gqa-q8.gguf").read_bytes()
    (tmp_path / "models" / "cut.gguf").write_bytes(data[: len(data) // 2])
    check_fails(run_cli("plan", cwd=tmp_path), "truncated")


def test_truncated_header(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD, model="cut.gguf")
    (tmp_path / "models" / "cut.gguf").write_bytes((model_dir / "gqa-q8.gguf").read_bytes()[:300])
    check_fails(run_cli("plan", cwd=tmp_path), "cut.gguf")


def test_model_too_big(tmp_path, model_dir):
    tiny = GOOD.replace("memory_gb: 4", "memory_gb: 0.01")
    project(tmp_path, model_dir, tiny)
    check_fails(run_cli("plan", cwd=tmp_path), "needs")


def test_ctx_above_fit(tmp_path, model_dir):
    small = GOOD.replace("memory_gb: 4", "memory_gb: 0.08")
    project(tmp_path, model_dir, small)
    r = run_cli("plan", "--ctx", "4096", "--no-flash-attn", cwd=tmp_path)
    check_fails(r, "short by")
    assert "use --ctx" in r.stderr


def test_quantized_v_without_flash_attention(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD)
    check_fails(run_cli("plan", "--cache-type-v", "q8_0", "--no-flash-attn", cwd=tmp_path), "needs flash attention")


def test_unknown_cache_type(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD)
    check_fails(run_cli("plan", "--cache-type-k", "q3_x", cwd=tmp_path), "not a KV cache type", code=2)


def test_usage_error_exit_2(tmp_path):
    r = run_cli("plan", "--ctx", "notanumber", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
