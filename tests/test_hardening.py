"""Hardening, round 2 (issue 16), by class: the projector inside the fit, the API key never
leaving the cluster, sandboxed templates, hostile servers and headers bounded, signals and the
file system never leaving half a cluster, power sweeps on mixed-vendor hosts.

Every failure case: one line `error: cause — fix`, exit != 0, no traceback, nothing written
that should not be, nothing sent where it should not go, no hang."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import gguf
import pytest
import yaml

from conftest import ROOT, run_cli
from support.hostile_server import (HostileServer, gzip_bomb, send, send_json, stream_tokens_forever,
                                    trickle)
from support.sparse import Q, qwen3_vl_30b_a3b, qwen3_vl_mmproj, write_sparse_gguf
from support.synthetic import TEST_SHAPES, write_gguf

MiB = 1 << 20


def one_line(r: subprocess.CompletedProcess, expected: str, code: int = 1) -> str:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(expected, err), err
    return err


def write_project(root: Path, cfg: dict, model: str = "m.gguf") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    if not (root / "models" / model).exists():
        write_gguf(root / "models" / model, TEST_SHAPES[0])
    cfg.setdefault("models", {"m": {"file": model, "ctx": 2048, "default": True}})
    (root / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def cpu_cluster(port: int = 8080, api_key: bool = False, **master) -> dict:
    return {"cluster": {"name": "hard"}, "master": {"host": "local", "port": port, "api_key": api_key, **master},
            "hosts": [{"name": "local", "address": "127.0.0.1",
                       "devices": [{"vendor": "cpu", "memory_gb": 2, "threads": 1}]}]}


# === memory: everything placed beside the layers is part of the fit ================================
@pytest.fixture(scope="module")
def seed004(tmp_path_factory) -> Path:
    """Seed 004's own box and model: RTX 4070 12 GB (master) + MI50 32 GB, Qwen3-VL-30B-A3B Q5_K_M
    with its projector — header-only files of the real shapes."""
    root = tmp_path_factory.mktemp("seed004")
    (root / "models").mkdir()
    qwen3_vl_30b_a3b(root / "models" / "Qwen3-VL-30B-A3B-Instruct-Q5_K_M.gguf")
    qwen3_vl_mmproj(root / "models" / "mmproj-Qwen3-VL-30B-A3B-Instruct-f16.gguf")
    return root


def seed004_config(root: Path, **model) -> Path:
    cfg = {"master": {"host": "nv"}, "hosts": [
        {"name": "nv", "address": "192.168.1.30",
         "devices": [{"vendor": "nvidia", "name": "RTX 4070", "arch": "sm_89", "vram_gb": 12, "index": 0}]},
        {"name": "mi50", "address": "192.168.1.31",
         "devices": [{"vendor": "amd", "name": "Instinct MI50", "arch": "gfx906", "vram_gb": 32, "index": 0}]}],
        "models": {"vl": {"file": "Qwen3-VL-30B-A3B-Instruct-Q5_K_M.gguf",
                          "mmproj": "mmproj-Qwen3-VL-30B-A3B-Instruct-f16.gguf", **model}}}
    (root / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    return root


def link_models(src: Path, root: Path) -> None:
    """Hard links of the header-only models (copying would fill the disk: they are sparse)."""
    (root / "models").mkdir(parents=True, exist_ok=True)
    for p in (src / "models").iterdir():
        os.link(p, root / "models" / p.name)


def plan_json(root: Path, *args: str) -> dict:
    r = run_cli("plan", "--json", *args, cwd=root)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def within_budget(plan: dict) -> None:
    for d in plan["devices"]:
        assert d["total_bytes"] <= d["budget_bytes"], (d["id"], d["total_bytes"] / MiB, d["budget_bytes"] / MiB)


def test_seed004_projector_is_inside_the_fit(seed004):
    # issue 16: this plan was 12,432 MiB on an 11,264 MiB budget before the projector joined the search
    plan = plan_json(seed004_config(seed004, ctx=32768, parallel=1, split="all"))
    within_budget(plan)
    cuda = next(d for d in plan["devices"] if d["id"] == "CUDA0")
    assert cuda["projector_bytes"] > 900 * MiB and cuda["budget_bytes"] == 11264 * MiB
    assert sum(1 for d in plan["devices"] if d["projector_bytes"]) == 1


def test_seed004_auto_context_leaves_room_for_the_projector(seed004):
    plan = plan_json(seed004_config(seed004, parallel=1, split="all"))
    within_budget(plan)
    assert plan["ctx"] >= 32768


def test_seed004_generate_writes_the_fitted_plan(seed004):
    root = seed004_config(seed004, ctx=32768, split="all")
    r = run_cli("generate", cwd=root)
    assert r.returncode == 0, r.stderr
    server = yaml.safe_load((root / "compose" / "nv" / "docker-compose.yml").read_text())["services"]["llama-server"]
    assert "--mmproj" in server["command"]


def test_projector_without_local_gpus_lands_on_the_first_used_device(tmp_path, seed004):
    link_models(seed004, tmp_path)
    cfg = {"master": {"host": "front"}, "hosts": [
        {"name": "front", "address": "10.0.0.1", "devices": []},
        {"name": "a", "address": "10.0.0.2", "devices": [{"vendor": "nvidia", "arch": "sm_89", "vram_gb": 16}]},
        {"name": "b", "address": "10.0.0.3", "devices": [{"vendor": "nvidia", "arch": "sm_89", "vram_gb": 16}]}],
        "models": {"vl": {"file": "Qwen3-VL-30B-A3B-Instruct-Q5_K_M.gguf", "ctx": 16384, "split": "all",
                          "mmproj": "mmproj-Qwen3-VL-30B-A3B-Instruct-f16.gguf"}}}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    plan = plan_json(tmp_path)
    within_budget(plan)
    assert plan["devices"][0]["projector_bytes"] > 0 and plan["devices"][1]["projector_bytes"] == 0


def test_projector_that_fits_nowhere_is_one_line_and_nothing_is_written(tmp_path, seed004):
    link_models(seed004, tmp_path)
    cfg = {"master": {"host": "nv"}, "hosts": [
        {"name": "nv", "address": "10.0.0.1", "devices": [{"vendor": "nvidia", "arch": "sm_89", "vram_gb": 1.2}]},
        {"name": "big", "address": "10.0.0.2", "devices": [{"vendor": "cpu", "memory_gb": 64}]}],
        "models": {"vl": {"file": "Qwen3-VL-30B-A3B-Instruct-Q5_K_M.gguf", "ctx": 4096,
                          "mmproj": "mmproj-Qwen3-VL-30B-A3B-Instruct-f16.gguf"}}}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    one_line(run_cli("generate", cwd=tmp_path), r"CUDA0 on nv would need \d+ MiB of its \d+ MiB \(with the projector\)")
    assert not (tmp_path / "compose").exists()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix != ".gguf"}


def test_fixed_context_over_budget_is_never_written(seed004):
    root = seed004_config(seed004, ctx=262144, parallel=4, split="all", experts="gpu")
    before = snapshot(root)
    one_line(run_cli("generate", cwd=root), "does not fit")
    assert snapshot(root) == before


# === secrets: the key goes to the cluster's own master only, never into argv, logs or errors =========
@pytest.fixture
def keyed(tmp_path):
    """A project with api_key: true whose master port is a recording server's; generate wrote the key."""
    server = HostileServer({"/v1/models": send_json({"data": [{"id": "m"}]}),
                            "/v1/chat/completions": send(500, b'{"error": "no"}')})
    root = write_project(tmp_path / "p", cpu_cluster(port=server.port, api_key=True))
    assert run_cli("generate", cwd=root).returncode == 0
    key = re.search(r"^LLAMA_API_KEY=(\S+)$", (root / "compose" / "local" / ".env").read_text(), re.M)[1]
    yield root, server, key
    server.close()


def test_key_goes_to_the_own_master(keyed):
    root, server, key = keyed
    run_cli("bench", "--runs", "1", "--max-tokens", "4", "--timeout", "5", cwd=root)
    assert server.authorizations() and set(server.authorizations()) == {f"Bearer {key}"}


def test_key_never_goes_to_another_server(keyed):
    root, _, key = keyed
    other = HostileServer({"/v1/models": send_json({"data": [{"id": "x"}]}),
                           "/v1/chat/completions": send(401, b'{"error": "key?"}')})
    try:
        r = run_cli("bench", "--url", other.url, "--runs", "1", "--max-tokens", "4", "--timeout", "5", cwd=root)
        one_line(r, "answered 401.*own master only.*HYDRA_API_KEY")
        assert other.authorizations() == [] and len(other.headers) == 2
    finally:
        other.close()


def test_key_never_goes_to_another_port_of_the_same_host(keyed):
    root, server, _ = keyed
    other = HostileServer({"/v1/models": send_json({"data": [{"id": "x"}]})})
    try:
        run_cli("bench", "--url", f"http://127.0.0.1:{other.port}", "--runs", "1", "--timeout", "5", cwd=root)
        assert other.authorizations() == []
    finally:
        other.close()


def test_key_goes_to_the_master_url_spelled_with_a_path(keyed):
    root, server, key = keyed
    run_cli("bench", "--url", f"{server.url}/", "--model", "m", "--runs", "1", "--timeout", "5", cwd=root)
    assert server.authorizations() == [f"Bearer {key}"]


def test_hydra_api_key_is_sent_where_the_user_says(keyed):
    root, _, key = keyed
    other = HostileServer({"/v1/models": send_json({"data": [{"id": "x"}]})})
    try:
        run_cli("bench", "--url", other.url, "--runs", "1", "--timeout", "5", cwd=root,
                env={"HYDRA_API_KEY": "user-chosen-key-123"})
        assert set(other.authorizations()) == {"Bearer user-chosen-key-123"}
    finally:
        other.close()


def test_power_sweep_url_gets_no_key(keyed, tmp_path):
    root, _, _ = keyed
    other = HostileServer({"/v1/chat/completions": send(500, b"{}")})
    state = tmp_path / "gpu.json"
    state.write_text(json.dumps({"gpus": {"0": {"name": "RTX 3090", "limit": 350.0, "min": 100.0, "max": 400.0}}}))
    env = {"FAKE_GPU_STATE": str(state), "FAKE_GPU_LOG": str(tmp_path / "log"),
           "PATH": f"{ROOT / 'tests' / 'support' / 'standins'}{os.pathsep}{os.environ['PATH']}"}
    try:
        r = run_cli("bench", "power-sweep", "--gpu", "local:nvidia:0", "--limits", "200", "--out", str(tmp_path / "o"),
                    "--settle", "0", "--url", other.url, "--model", "m", "--runs", "1", "--timeout", "5", cwd=root,
                    env=env)
        assert r.returncode == 1 and other.authorizations() == []
    finally:
        other.close()


def test_a_server_echoing_the_key_never_shows_it(keyed):
    root, server, key = keyed
    server.routes["/v1/chat/completions"] = send(500, f'{{"error": "bad key {key}"}}'.encode())
    r = run_cli("bench", "--runs", "1", "--max-tokens", "4", "--timeout", "5", "--json", cwd=root)
    assert key not in r.stdout + r.stderr and "<api key>" in r.stderr


def test_supervisor_never_puts_the_key_in_argv(tmp_path):
    """The generated supervisor, for real (bash + curl): the key reaches /slots, never a process's argv."""
    key = "sk-supervisor-test-9f8e7d6c5b4a"
    seen = HostileServer({"/health": send_json({"status": "ok"}), "/slots": send_json([])})
    fake_server = tmp_path / "fake-llama-server"
    fake_server.write_text("#!/bin/sh\nexec sleep 60\n")
    fake_server.chmod(0o755)
    supervisor = ROOT / "hydra_compose" / "data" / "supervise.sh"
    proc = subprocess.Popen(["bash", str(supervisor), "--host", "127.0.0.1", "--port", str(seen.port)],
                            env={**os.environ, "LLAMA_API_KEY": key, "HYDRA_SERVER_BIN": str(fake_server)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    argvs = []
    try:
        deadline = time.monotonic() + 15
        while not seen.authorizations() and time.monotonic() < deadline:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        argvs.append(Path(f"/proc/{pid}/cmdline").read_bytes())
                    except OSError:
                        pass
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        seen.close()
    assert f"Bearer {key}" in seen.authorizations()
    assert not any(key.encode() in a for a in argvs)


# === templates: sandboxed, every problem one line naming the template and line =====================
def template_project(tmp_path: Path, text: str | bytes, name: str = "cpu.Dockerfile.j2") -> Path:
    root = write_project(tmp_path / "p", cpu_cluster())
    (root / "templates").mkdir()
    target = root / "templates" / name
    target.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


ESCAPES = {
    "mro subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals os.system": "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].system('touch {marker}') }}",
    "namespace attr": "{% set x = namespace() %}{{ x.__class__.__base__.__subclasses__() }}",
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_template_sandbox_escape_is_refused(case, tmp_path):
    marker = tmp_path / "pwned"
    root = template_project(tmp_path, ESCAPES[case].replace("{marker}", str(marker)))
    one_line(run_cli("generate", cwd=root), r"template cpu\.Dockerfile\.j2.*(unsafe|sandbox|undefined|attribute)")
    assert not marker.exists() and not (root / "compose").exists()


@pytest.mark.parametrize("text, expected", [
    ("line one\n{% if %}\n", r"template cpu\.Dockerfile\.j2 line 2: "),
    ("a\nb\n{{ no_such_value }}\n", r"template cpu\.Dockerfile\.j2 line 3: 'no_such_value' is undefined"),
    ("{% include '../../../../etc/passwd' %}", r"includes '\.\./\.\./\.\./\.\./etc/passwd', which is neither"),
    ("{% extends 'cpu.Dockerfile.j2' %}", r"recurses|cpu\.Dockerfile\.j2"),
    ("{{ 1 / 0 }}", r"template cpu\.Dockerfile\.j2 line 1: ZeroDivisionError"),
    ("{% for i in range(10**9) %}x{% endfor %}", r"range too big|unsafe|sandbox"),
])
def test_broken_templates_are_one_line(tmp_path, text, expected):
    root = template_project(tmp_path, text)
    one_line(run_cli("generate", cwd=root), expected)
    assert not (root / "compose").exists()


def test_template_not_utf8(tmp_path):
    root = template_project(tmp_path, b"\xff\xfe bad")
    one_line(run_cli("generate", cwd=root), "not UTF-8")


def test_template_fifo_never_hangs(tmp_path):
    root = template_project(tmp_path, "x")
    (root / "templates" / "cpu.Dockerfile.j2").unlink()
    os.mkfifo(root / "templates" / "cpu.Dockerfile.j2")
    one_line(run_cli("generate", cwd=root), "not a regular file")


def test_template_link_out_of_templates_is_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    root = template_project(tmp_path, "{% include 'leak.j2' %}")
    (root / "templates" / "leak.j2").symlink_to(secret)
    one_line(run_cli("generate", cwd=root), "includes 'leak.j2', which is neither")
    assert not (root / "dockerfiles").exists()


def test_template_includes_a_shipped_one(tmp_path):
    root = template_project(tmp_path, '{% extends "llama-cpp.Dockerfile.j2" %}{% block runtime_packages %} jq{% endblock %}')
    assert run_cli("generate", cwd=root).returncode == 0
    assert "ca-certificates stunnel4 jq" in (root / "dockerfiles" / "cpu.Dockerfile").read_text()


# === hostile servers: bounded in time and size, nothing unfiltered reaches the terminal ============
def bench(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("bench", "--url", url, *args, cwd=cwd)


def timed_run(fn):  # noqa: ANN001, ANN202
    start = time.monotonic()
    out = fn()
    return out, time.monotonic() - start


def test_trickling_stream_ends_at_the_deadline(tmp_path):
    s = HostileServer({"/v1/chat/completions": trickle(b"d", 0.2)})
    try:
        r, took = timed_run(lambda: bench(s.url, "--model", "m", "--runs", "1", "--timeout", "3", cwd=tmp_path))
    finally:
        s.close()
    one_line(r, "runs failed|did not finish")
    assert took < 15, took


def test_trickling_models_list_ends_at_the_deadline(tmp_path):
    s = HostileServer({"/v1/models": trickle(b"[", 0.2)})
    try:
        r, took = timed_run(lambda: bench(s.url, "--runs", "1", "--timeout", "3", cwd=tmp_path))
    finally:
        s.close()
    one_line(r, "did not finish within 3 s")
    assert took < 15, took


def test_tokens_forever_end_at_the_deadline(tmp_path):
    s = HostileServer({"/v1/chat/completions": stream_tokens_forever()})
    try:
        r, took = timed_run(lambda: bench(s.url, "--model", "m", "--runs", "1", "--timeout", "3", cwd=tmp_path))
    finally:
        s.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr and took < 15


def test_gzip_bomb_stops_at_the_cap(tmp_path):
    s = HostileServer({"/v1/models": gzip_bomb()})
    try:
        r = bench(s.url, "--runs", "1", "--timeout", "20", cwd=tmp_path)
    finally:
        s.close()
    one_line(r, "sent more than 4096 KiB")


def test_endless_sse_line_is_refused(tmp_path):
    s = HostileServer({"/v1/chat/completions": send(200, b"data: " + b"x" * (3 << 20))})
    try:
        r = bench(s.url, "--model", "m", "--runs", "1", "--timeout", "20", cwd=tmp_path)
    finally:
        s.close()
    one_line(r, "runs failed|longer than")


def test_deeply_nested_json_is_not_a_crash(tmp_path):
    s = HostileServer({"/v1/models": send(200, b"[" * 100000 + b"]" * 100000)})
    try:
        r = bench(s.url, "--runs", "1", "--timeout", "10", cwd=tmp_path)
    finally:
        s.close()
    one_line(r, "not JSON")


def test_huge_model_list_takes_the_first(tmp_path):
    models = {"data": [{"id": f"m{i}"} for i in range(150000)]}
    s = HostileServer({"/v1/models": send_json(models), "/v1/chat/completions": send(500, b"{}")})
    try:
        r = bench(s.url, "--runs", "1", "--timeout", "10", "--json", cwd=tmp_path)
    finally:
        s.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("body", [b'{"error": "\x1b[2J\x1b]0;pwned\x07 boom"}', b"\x1b[31mred\x1b[0m \xe2\x80\xae evil"])
def test_escape_sequences_from_servers_are_shown_escaped(tmp_path, body):
    s = HostileServer({"/v1/chat/completions": send(500, body)})
    try:
        r = bench(s.url, "--model", "m", "--runs", "1", "--timeout", "5", cwd=tmp_path)
    finally:
        s.close()
    assert r.returncode == 1 and "\x1b" not in r.stderr + r.stdout and "\u202e" not in r.stderr


def test_model_name_with_escapes_is_escaped_in_json_and_terminal(tmp_path):
    s = HostileServer({"/v1/models": send_json({"data": [{"id": "m\x1b[2J"}]}),
                       "/v1/chat/completions": send(500, b"{}")})
    try:
        r = bench(s.url, "--runs", "1", "--timeout", "5", cwd=tmp_path)
    finally:
        s.close()
    assert "\x1b" not in r.stdout + r.stderr


@pytest.mark.parametrize("routes", [
    {"/health": trickle(b"{", 0.2)},
    {"/health": send_json({"status": "ok"}), "/v1/models": gzip_bomb(), "/slots": gzip_bomb(), "/metrics": gzip_bomb()},
    {"/health": send_json({"status": "ok"}), "/slots": send(200, b"[" * 50000), "/metrics": trickle(b"l", 0.2)},
    {"/health": send_json({"status": "ok"}), "/metrics": send(200, b"llamacpp:predicted_tokens_seconds inf\n")},
])
def test_status_answers_are_bounded(routes):
    from hydra_compose.commands.status import master_answers

    s = HostileServer(routes)
    try:
        out, took = timed_run(lambda: master_answers(s.url, {}))
    finally:
        s.close()
    assert took < 20, took
    assert "predicted_tokens_per_s" not in out


# === GGUF headers: every count and size range-checked, bounded work, split models consistent =======
def header_gguf(path: Path, kv: dict, arch: str = "llama", layers: int = 2, extra=()) -> Path:  # noqa: ANN001
    base = {"block_count": layers, "context_length": 4096, "embedding_length": 64, "feed_forward_length": 128,
            "attention.head_count": 4, "attention.head_count_kv": 2}
    tensors = [("token_embd.weight", (64, 256), Q.F16)] + list(extra)
    for il in range(layers):
        tensors.append((f"blk.{il}.attn_q.weight", (64, 64), Q.F16))
    return write_sparse_gguf(path, arch, {**base, **kv}, tensors)


def model_project(tmp_path: Path, build) -> Path:  # noqa: ANN001
    root = tmp_path / "p"
    (root / "models").mkdir(parents=True)
    build(root / "models" / "m.gguf")
    (root / "cluster.yaml").write_text(yaml.safe_dump({**cpu_cluster(), "models": {"m": {"file": "m.gguf", "ctx": 2048}}}))
    return root


@pytest.mark.parametrize("kv, expected", [
    ({"expert_count": 8, "expert_used_count": 0}, "expert_used_count is 0 for 8 experts"),
    ({"expert_count": 4, "expert_used_count": 8}, "more than the 4 experts"),
    ({"expert_count": 4096, "expert_used_count": 2}, "expert_count is 4096, outside 0..1024"),
    ({"block_count": 600}, "block_count is 600, outside 1..512"),
    ({"embedding_length": 0}, "embedding_length is 0"),
    ({"attention.head_count_kv": [2, 2, 2]}, "has 3 entries|outside"),
])
def test_header_values_out_of_llama_cpp_range(tmp_path, kv, expected):
    layers = kv.get("block_count", 2) if kv.get("block_count", 2) <= 600 else 2
    root = model_project(tmp_path, lambda p: header_gguf(p, kv, layers=min(layers, 4)))
    if "head_count_kv" in str(kv):
        root = model_project(tmp_path / "b", lambda p: header_gguf(p, {**kv, "block_count": 4}, layers=4))
    one_line(run_cli("plan", cwd=root), expected)


def test_negative_recurrent_state_is_refused(tmp_path):
    kv = {"ssm.conv_kernel": 4, "ssm.inner_size": 128, "ssm.state_size": 16, "ssm.group_count": 1}

    def build(p: Path) -> None:
        w = gguf.GGUFWriter(str(p), "mamba2")
        for k, v in {"block_count": 2, "context_length": 4096, "embedding_length": 64}.items():
            w.add_uint32(f"mamba2.{k}", v)
        for k, v in kv.items():
            w.add_int32(f"mamba2.{k}", -v if k == "ssm.state_size" else v)
        w.add_tensor_info("token_embd.weight", (256, 64), gguf.np.float16, 256 * 64, raw_dtype=Q.F16)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        os.truncate(p, p.stat().st_size + 256 * 64 * 2 + 64)

    root = model_project(tmp_path, build)
    one_line(run_cli("plan", cwd=root), r"mamba2\.ssm\.state_size is -16")


def raw_header(path: Path, tensor_count: int, kv_count: int, body: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<IIQQ", 0x46554747, 3, tensor_count, kv_count) + body)
    return path


@pytest.mark.parametrize("build, expected", [
    (lambda p: raw_header(p, 1 << 40, 0), "tensors"),
    (lambda p: raw_header(p, 0, 1 << 40), "header keys"),
    # an array claiming 2^40 strings, a string claiming 2^50 bytes, an array past the end of the file
    (lambda p: raw_header(p, 0, 1, struct.pack("<Q", 3) + b"abc" + struct.pack("<IIQ", 9, 8, 1 << 40)), "array of"),
    (lambda p: raw_header(p, 0, 1, struct.pack("<Q", 3) + b"abc" + struct.pack("<IQ", 8, 1 << 50)), "string of"),
    (lambda p: raw_header(p, 0, 1, struct.pack("<Q", 3) + b"abc" + struct.pack("<IIQ", 9, 6, 1 << 20)), "past the end"),
])
def test_header_counts_are_bounded(tmp_path, build, expected):
    root = model_project(tmp_path, build)
    (err, took) = timed_run(lambda: run_cli("plan", cwd=root))
    one_line(err, expected)
    assert took < 10


def test_tensor_with_too_many_dimensions(tmp_path):
    def build(p: Path) -> None:
        w = gguf.GGUFWriter(str(p), "llama")
        w.add_uint32("llama.block_count", 1)
        w.add_uint32("llama.embedding_length", 64)
        w.add_tensor_info("token_embd.weight", (2, 2, 2, 2, 2), gguf.np.float32, 32 * 4, raw_dtype=Q.F32)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
    one_line(run_cli("plan", cwd=model_project(tmp_path, build)), "5 dimensions|not a readable GGUF")


def test_the_largest_header_llama_cpp_accepts_plans_quickly(tmp_path):
    """512 tiny layers on 4 workers: the search is bounded (issue 16: a small header must not keep plan busy)."""
    root = model_project(tmp_path, lambda p: header_gguf(p, {"block_count": 512, "context_length": 1 << 20},
                                                         layers=512))
    cfg = yaml.safe_load((root / "cluster.yaml").read_text())
    cfg["hosts"][0]["devices"] = [{"vendor": "cpu", "memory_gb": 1, "rpc_port": 50052 + i} for i in range(4)]
    cfg["models"]["m"].pop("ctx")
    (root / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    r, took = timed_run(lambda: run_cli("plan", "--json", cwd=root))
    assert r.returncode == 0, r.stderr
    print(f"plan of 512 layers on 4 workers, auto context: {took:.1f} s")
    assert took < 60


def split_model(root: Path, parts: int = 2, fix=None) -> None:  # noqa: ANN001
    for i in range(parts):
        p = root / "models" / f"big-{i + 1:05d}-of-{parts:05d}.gguf"
        kv = {"split.no": i, "split.count": parts} if fix is None else fix(i, parts)
        w = gguf.GGUFWriter(str(p), "llama")
        for k, v in {"block_count": 2, "context_length": 4096, "embedding_length": 64,
                     "attention.head_count": 4}.items():
            w.add_uint32(f"llama.{k}", v)
        w.add_uint16("split.no", kv["split.no"])
        w.add_uint16("split.count", kv["split.count"])
        name = "token_embd.weight" if i == 0 else f"blk.{i - 1}.attn_q.weight"
        w.add_tensor_info(name, (64, 64), gguf.np.float16, 64 * 64 * 2, raw_dtype=Q.F16)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        os.truncate(p, p.stat().st_size + 64 * 64 * 2 + 64)


def split_project(tmp_path: Path, **kw) -> Path:
    root = tmp_path / "p"
    (root / "models").mkdir(parents=True)
    split_model(root, **kw)
    (root / "cluster.yaml").write_text(yaml.safe_dump({**cpu_cluster(), "models": {
        "big": {"file": "big-00001-of-00002.gguf", "ctx": 2048}}}))
    return root


def test_split_model_parts_consistent(tmp_path):
    assert run_cli("plan", cwd=split_project(tmp_path)).returncode == 0


def test_split_model_part_from_another_split(tmp_path):
    root = split_project(tmp_path, fix=lambda i, n: {"split.no": i, "split.count": 3 if i else n})
    one_line(run_cli("plan", cwd=root), "is not part 2 of 2 of the same model")


def test_split_model_part_that_is_the_same_file(tmp_path):
    root = split_project(tmp_path)
    second = root / "models" / "big-00002-of-00002.gguf"
    second.unlink()
    second.symlink_to(root / "models" / "big-00001-of-00002.gguf")
    one_line(run_cli("plan", cwd=root), "are the same file")


def test_split_model_part_outside_models(tmp_path):
    root = split_project(tmp_path)
    second = root / "models" / "big-00002-of-00002.gguf"
    shutil.move(second, tmp_path / "elsewhere.gguf")
    second.symlink_to(tmp_path / "elsewhere.gguf")
    one_line(run_cli("plan", cwd=root), "big-00002-of-00002.gguf is a link to a file outside")


def test_model_link_loop(tmp_path):
    root = write_project(tmp_path / "p", cpu_cluster())
    (root / "models" / "m.gguf").unlink()
    (root / "models" / "m.gguf").symlink_to(root / "models" / "loop.gguf")
    (root / "models" / "loop.gguf").symlink_to(root / "models" / "m.gguf")
    one_line(run_cli("plan", cwd=root), "not found|cannot be reached|leads nowhere")


# === inspect --write: tool output is data, the existing file is checked before anything ============
def inspect_env(tmp_path: Path, nvidia_csv: str) -> dict:
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    (tools / "nvidia-smi.out").write_text(nvidia_csv)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "nvidia-smi").exists():
        (bin_dir / "nvidia-smi").symlink_to(ROOT / "tests" / "support" / "standins" / "recorded")
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_TOOLS_DIR": str(tools),
            "HYDRA_SYSFS_ROOT": str(tmp_path / "no-sysfs")}


GOOD_GPU = "0, NVIDIA GeForce RTX 3090, 24576, 8.6, 350.00, 100.00, 400.00, 00000000:01:00.0\n"


@pytest.mark.parametrize("existing, expected", [
    (b"hosts: [\n", "line 2|expected"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"hosts: 5\nmaster: {host: a}\n", "hosts must be a list"),
    (b"- just\n- a list\n", "expected a mapping"),
    (b"hosts:\n  - name: a\n    devices: [1, 2]\nmaster: {host: a}\n", "every device must be a mapping"),
])
def test_inspect_write_refuses_an_unusable_cluster_yaml(tmp_path, existing, expected):
    (tmp_path / "cluster.yaml").write_bytes(existing)
    one_line(run_cli("inspect", "--write", cwd=tmp_path, env=inspect_env(tmp_path, GOOD_GPU)), expected)
    assert (tmp_path / "cluster.yaml").read_bytes() == existing


def test_inspect_write_cluster_yaml_fifo_never_hangs(tmp_path):
    os.mkfifo(tmp_path / "cluster.yaml")
    r, took = timed_run(lambda: run_cli("inspect", "--write", cwd=tmp_path, env=inspect_env(tmp_path, GOOD_GPU)))
    one_line(r, "not a regular file")
    assert took < 30


@pytest.mark.parametrize("memory", ["inf", "nan", "1e400", "２４５７６", "-24576", "0x6000"])
def test_gpu_numbers_must_be_finite_decimals(tmp_path, memory):
    csv = GOOD_GPU.replace("24576", memory)
    data = json.loads(run_cli("inspect", "--json", cwd=tmp_path, env=inspect_env(tmp_path, csv)).stdout)
    (gpu,) = data["hosts"][0]["devices"]
    assert gpu["vram_mib"] in (None,) or gpu["vram_mib"] < 0  # never inf, NaN or a foreign digit's value
    # and --write then refuses an inventory plan would reject, writing nothing
    (tmp_path / "cluster.yaml").write_text("master: {host: x}\nhosts: []\n")
    r = run_cli("inspect", "--write", cwd=tmp_path, env=inspect_env(tmp_path, csv))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert (tmp_path / "cluster.yaml").read_text() == "master: {host: x}\nhosts: []\n"


def test_nested_amd_json_is_a_note(tmp_path):
    env = inspect_env(tmp_path, GOOD_GPU)
    (Path(env["FAKE_TOOLS_DIR"]) / "amd-smi.out").write_text("[" * 200000 + "]" * 200000)
    (Path(env["PATH"].split(os.pathsep)[0]) / "amd-smi").symlink_to(ROOT / "tests" / "support" / "standins" / "recorded")
    r = run_cli("inspect", "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert any("amd-smi output not understood" in n for n in json.loads(r.stdout)["hosts"][0]["notes"])


def test_oversized_tool_output_is_dropped(tmp_path):
    env = inspect_env(tmp_path, GOOD_GPU * 200000)  # ~16 MB of nvidia-smi
    r, took = timed_run(lambda: run_cli("inspect", "--json", cwd=tmp_path, env=env))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["hosts"][0]["devices"] == [] and took < 60


def test_gpu_index_out_of_range_is_skipped(tmp_path):
    data = json.loads(run_cli("inspect", "--json", cwd=tmp_path,
                              env=inspect_env(tmp_path, GOOD_GPU.replace("0, NVIDIA", "9999, NVIDIA"))).stdout)
    assert data["hosts"][0]["devices"] == [] and any("index 9999" in n for n in data["hosts"][0]["notes"])


# === signals and the file system ================================================================
def big_cluster(tmp_path: Path, hosts: int = 120) -> Path:
    cfg = {"cluster": {"name": "many"}, "master": {"host": "h0", "api_key": True}, "hosts": [
        {"name": f"h{i}", "address": f"10.1.{i // 250}.{i % 250 + 1}",
         "devices": [{"vendor": "cpu", "memory_gb": 1, "threads": 1}]} for i in range(hosts)]}
    return write_project(tmp_path / "many", cfg)


def complete_set(root: Path) -> dict[str, bytes]:
    manifest = json.loads((root / ".hydra-generated.json").read_text())
    files = {rel: (root / rel).read_bytes() for rel in manifest}
    for rel, digest in manifest.items():
        import hashlib
        assert hashlib.sha256(files[rel]).hexdigest() == digest, rel
    return files


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_generate_leaves_old_or_new_set(tmp_path, sig):
    root = big_cluster(tmp_path)
    assert run_cli("generate", cwd=root).returncode == 0
    old = complete_set(root)
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5, 2.0):
        proc = subprocess.Popen(["hydra-compose", "generate", "--ctx", "1024", "--force"], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        now = complete_set(root)  # every file matches the manifest: one complete set
        assert set(now) == set(old)
        assert not list(root.glob(".hydra-staging-*"))  # no staging copy left holding the key
        r = run_cli("generate", cwd=root)  # and nothing looks edited afterwards
        assert r.returncode == 0 and "was edited" not in r.stderr, r.stderr


def test_stale_staging_of_a_killed_generate_is_removed(tmp_path):
    root = write_project(tmp_path / "p", cpu_cluster(api_key=True))
    stale = root / ".hydra-staging-abc123" / "new" / "compose" / "local"
    stale.mkdir(parents=True)
    (stale / ".env").write_text("LLAMA_API_KEY=leaked\n")
    assert run_cli("generate", cwd=root).returncode == 0
    assert not (root / ".hydra-staging-abc123").exists()


def test_lock_file_fifo_never_hangs(tmp_path):
    root = write_project(tmp_path / "p", cpu_cluster())
    os.mkfifo(root / ".hydra-generate.lock")
    r, took = timed_run(lambda: run_cli("generate", cwd=root))
    one_line(r, r"\.hydra-generate\.lock is not a regular file")
    assert took < 30


def test_output_file_fifo_is_refused(tmp_path):
    root = write_project(tmp_path / "p", cpu_cluster())
    (root / "compose" / "local").mkdir(parents=True)
    os.mkfifo(root / "compose" / "local" / "docker-compose.yml")
    one_line(run_cli("generate", cwd=root), "is not a regular file")


def test_disk_full_is_one_line(tmp_path, monkeypatch, runner):
    from conftest import invoke
    from hydra_compose.runtime import writer

    root = write_project(tmp_path / "p", cpu_cluster())

    def full(*a, **k):  # noqa: ANN002, ANN003
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.Path, "write_text", full)
    r = invoke(runner, "generate", cwd=root)
    assert r.exit_code == 1 and "No space left on device" in str(r.exception)
    assert not (root / "compose").exists() and not list(root.glob(".hydra-staging-*"))


def test_unsearchable_models_folder_is_one_line(tmp_path, monkeypatch, runner):
    from conftest import invoke

    root = write_project(tmp_path / "p", cpu_cluster())
    real_stat = os.stat

    def denied(path, *a, **k):  # noqa: ANN001, ANN002, ANN003
        if "models" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", denied)
    r = invoke(runner, "plan", cwd=root)
    assert r.exit_code == 1 and "cannot be reached: Permission denied" in str(r.exception)


def test_read_only_output_is_one_line(tmp_path):
    root = write_project(tmp_path / "p", cpu_cluster())
    (tmp_path / "ro").write_text("a file where the output folder should be")
    one_line(run_cli("generate", "-o", str(tmp_path / "ro" / "sub"), cwd=root), "cannot write")


# === power sweeps on mixed-vendor hosts, tools that lie ===========================================
STANDINS = ROOT / "tests" / "support" / "standins"


@pytest.fixture
def two_vendors(tmp_path):
    """Seed 004's box on one host: an RTX 4070 (nvidia 0) and an MI50 (amd 0), stand-in tools."""
    state = tmp_path / "gpu.json"
    state.write_text(json.dumps({"gpus": {"0": {"name": "RTX 4070", "limit": 200.0, "min": 100.0, "max": 220.0}}}))
    amd_state = tmp_path / "amd.json"
    amd_state.write_text(json.dumps({"gpus": {"0": {"limit": 225.0, "min": 150.0, "max": 300.0}}}))
    root = write_project(tmp_path / "p", {"master": {"host": "box"}, "hosts": [{"name": "box", "address": "127.0.0.1",
                         "devices": [{"vendor": "nvidia", "arch": "sm_89", "vram_gb": 12, "index": 0,
                                      "bus_id": "00000000:01:00.0"},
                                     {"vendor": "amd", "arch": "gfx906", "vram_gb": 32, "index": 0,
                                      "bus_id": "0000:03:00.0"}]}]})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(STANDINS / "nvidia-smi")
    (bin_dir / "amd-smi").write_text(f"#!/bin/sh\nFAKE_GPU_STATE={amd_state} exec {STANDINS / 'amd-smi'} \"$@\"\n")
    (bin_dir / "amd-smi").chmod(0o755)
    env = {"FAKE_GPU_STATE": str(state), "FAKE_GPU_LOG": str(tmp_path / "calls.log"),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    from support.fake_server import FakeLlama
    server = FakeLlama()
    yield root, env, server, state, amd_state, tmp_path
    server.close()


def sweep(root: Path, env: dict, url: str, gpu: str, out: Path, limits: str = "180") -> subprocess.CompletedProcess:
    return run_cli("bench", "power-sweep", "--gpu", gpu, "--limits", limits, "--out", str(out), "--settle", "0",
                   "--url", url, "--model", "m", "--runs", "1", "--max-tokens", "10", cwd=root, env=env)


def test_ambiguous_gpu_index_on_a_two_vendor_host(two_vendors):
    root, env, server, *_ = two_vendors
    one_line(sweep(root, env, server.url, "local:0", root / "o"), "has GPU 0 of amd and nvidia.*local:amd:0", code=2)


def test_vendor_selects_the_amd_card(two_vendors):
    root, env, server, state, amd_state, tmp = two_vendors
    r = sweep(root, env, server.url, "local:amd:0", tmp / "o", "200")
    assert r.returncode == 0, r.stderr
    assert json.loads(amd_state.read_text())["gpus"]["0"]["limit"] == 225.0  # restored
    assert json.loads(state.read_text())["gpus"]["0"]["limit"] == 200.0  # the 4070 untouched
    assert "| local:amd:0 | 200 W |" in (tmp / "o" / "sweep.md").read_text()


def test_bus_id_selects_the_card(two_vendors):
    root, env, server, state, amd_state, tmp = two_vendors
    r = sweep(root, env, server.url, "local:0000:01:00.0", tmp / "o", "150")
    assert r.returncode == 0, r.stderr
    assert "| local:nvidia:0 | 150 W |" in (tmp / "o" / "sweep.md").read_text()
    one_line(sweep(root, env, server.url, "local:0000:09:00.0", tmp / "o"), "no GPU with bus id", code=2)


def test_amd_without_amd_smi_uses_sysfs_power_cap(two_vendors):
    root, env, server, _, _, tmp = two_vendors
    (Path(env["PATH"].split(os.pathsep)[0]) / "amd-smi").unlink()
    hwmon = tmp / "sys" / "devices" / "pci" / "0000:03:00.0" / "hwmon" / "hwmon3"
    hwmon.mkdir(parents=True)
    for name, value in (("power1_cap", 225000000), ("power1_cap_min", 150000000), ("power1_cap_max", 300000000),
                        ("power1_average", 120000000), ("temp1_input", 55000)):
        (hwmon / name).write_text(f"{value}\n")
    (hwmon.parents[1] / "vendor").write_text("0x1002\n")
    card = tmp / "sys" / "class" / "drm" / "card1"
    card.mkdir(parents=True)
    (card / "device").symlink_to(hwmon.parents[1])
    r = sweep(root, {**env, "HYDRA_SYSFS_ROOT": str(tmp / "sys")}, server.url, "local:amd:0", tmp / "o", "200")
    assert r.returncode == 0, r.stderr
    assert (hwmon / "power1_cap").read_text().strip() == "225000000"  # restored after 200 W
    row = json.loads((tmp / "o" / "sweep.json").read_text())["rows"][0]
    assert row["avg_power_w"] == pytest.approx(120.0) and row["max_temp_c"] == 55


def lying_nvidia(bin_dir: Path, behaviour: str) -> None:
    (bin_dir / "nvidia-smi").unlink()
    (bin_dir / "nvidia-smi").write_text(f"""#!/usr/bin/env python3
import sys
args = sys.argv[1:]
if "-L" in args: print("GPU 0: liar"); sys.exit(0)
if "-pl" in args: print("Power limit set."); sys.exit(0)
if any(a.startswith("--query-gpu=power.limit") for a in args):
    print({'"200.00, 300.00, 100.00"' if behaviour == "nonsense" else '"200.00, 100.00, 300.00"'}); sys.exit(0)
""")
    (bin_dir / "nvidia-smi").chmod(0o755)


def test_a_tool_that_ignores_the_limit_stops_the_sweep(two_vendors):
    root, env, server, _, _, tmp = two_vendors
    lying_nvidia(Path(env["PATH"].split(os.pathsep)[0]), "ignores")
    one_line(sweep(root, env, server.url, "local:nvidia:0", tmp / "o", "150"), "asked for 150 W, the driver reports 200 W")


def test_a_tool_that_reports_nonsense_changes_nothing(two_vendors):
    root, env, server, _, _, tmp = two_vendors
    lying_nvidia(Path(env["PATH"].split(os.pathsep)[0]), "nonsense")
    one_line(sweep(root, env, server.url, "local:nvidia:0", tmp / "o", "150"), "reports nonsense limits")


@pytest.mark.parametrize("limits", ["inf", "nan", "150,nan", "1e9", "-5", ""])
def test_limits_must_be_watts(two_vendors, limits):
    root, env, server, _, _, tmp = two_vendors
    one_line(sweep(root, env, server.url, "local:nvidia:0", tmp / "o", limits), "is not a list of watts", code=2)


def test_second_ctrl_c_during_restore_still_restores(two_vendors):
    root, env, server, state, _, tmp = two_vendors
    slow = server.__class__(delay_s=30)  # the benchmark never ends by itself
    try:
        proc = subprocess.Popen(["hydra-compose", "bench", "power-sweep", "--gpu", "local:nvidia:0", "--limits", "150",
                                 "--out", str(tmp / "o"), "--settle", "0", "--url", slow.url, "--model", "m",
                                 "--runs", "1", "--max-tokens", "10"], cwd=root, env={**os.environ, **env,
                                                                                       "FAKE_GPU_SLOW_SET": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while json.loads(state.read_text())["gpus"]["0"]["limit"] != 150.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # during the restore
        out, err = proc.communicate(timeout=60)
    finally:
        slow.close()
    assert proc.returncode == 130 and "Traceback" not in err
    assert json.loads(state.read_text())["gpus"]["0"]["limit"] == 200.0
    assert "restored and read back" in err


def test_failed_restore_never_says_restored(two_vendors):
    root, env, server, state, _, tmp = two_vendors
    slow = server.__class__(delay_s=30)
    try:
        proc = subprocess.Popen(["hydra-compose", "bench", "power-sweep", "--gpu", "local:nvidia:0", "--limits", "150",
                                 "--out", str(tmp / "o"), "--settle", "0", "--url", slow.url, "--model", "m",
                                 "--runs", "1", "--max-tokens", "10"], cwd=root,
                                env={**os.environ, **env, "FAKE_GPU_STUCK_AFTER": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while json.loads(state.read_text())["gpus"]["0"]["limit"] != 150.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        slow.close()
    assert proc.returncode != 0 and "Traceback" not in err
    assert "restored" not in err.replace("could not restore", "") and "200 W" in err
