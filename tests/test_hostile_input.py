"""Hostile and broken input: no value from cluster.yaml, inspect, a GGUF or a server
runs code, drops a worker, crashes a command or leaves half a cluster written.

Every case: one line naming the cause and the fix, exit code != 0, no traceback,
no generated file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf
import numpy as np
import pytest
import yaml

from conftest import ROOT, run_cli

GOOD = (ROOT / "examples" / "cpu-default.yaml").read_text()
MODEL_LINE = "  smollm2: {file: SmolLM2-135M-Instruct.Q4_1.gguf, ctx: 4096, parallel: 2, split: all, default: true}"
W0 = "{vendor: cpu, memory_gb: 4, threads: 2, rpc_port: 50052}"
GENERATED = ("compose", "dockerfiles", ".hydra-generated.json")


def project(tmp_path: Path, model_dir: Path, text: str) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    shutil.copy(model_dir / "gqa-q8.gguf", tmp_path / "models" / "gqa-q8.gguf")
    (tmp_path / "cluster.yaml").write_text(text.replace(MODEL_LINE, "  m: {file: gqa-q8.gguf, default: true}"))
    return tmp_path


def one_line_failure(r: subprocess.CompletedProcess, expected: str, code: int = 1) -> str:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(expected, err), err
    return err


def nothing_generated(root: Path) -> None:
    assert not any((root / name).exists() for name in GENERATED), sorted(p.name for p in root.iterdir())


def sub(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def device(extra: str) -> str:
    return sub(W0, W0[:-1] + ", " + extra + "}")


CONFIG_CASES = {
    # addresses: they reach --rpc, worker -H, healthchecks and the supervisor
    "address shell injection": (sub("address: 127.0.0.1", "address: 'x;touch /tmp/pwned;#'"), "not an IPv4"),
    "address command substitution": (sub("address: 127.0.0.1", "address: '$(touch /tmp/pwned)'"), "not an IPv4"),
    "address backticks": (sub("address: 127.0.0.1", "address: '`id`'"), "not an IPv4"),
    "address wildcard": (sub("address: 127.0.0.1", "address: 0.0.0.0"), "not an address to connect to"),
    "address empty": (sub("address: 127.0.0.1", "address: ''"), "not an address to connect to"),
    "address ipv6": (sub("address: 127.0.0.1", "address: '::1'"), "IPv6"),
    "address two values": (sub("address: 127.0.0.1", "address: 10.0.0.1 10.0.0.2"), "not an IPv4"),
    "address newline": (sub("address: 127.0.0.1", 'address: "10.0.0.1\\n10.0.0.2"'), "not an IPv4"),
    "address bad octet": (sub("address: 127.0.0.1", "address: 10.0.0.300"), "not an IPv4"),
    "address url": (sub("address: 127.0.0.1", "address: http://box"), "not an IPv4"),
    "host bind injection": (sub("address: 127.0.0.1", "address: 127.0.0.1\n    bind: '127.0.0.1;id'"), "bind"),
    "master bind injection": (sub("port: 8080", "port: 8080\n  bind: '$(reboot)'"), "master.bind"),
    "master bind dash": (sub("port: 8080", "port: 8080\n  bind: --help"), "master.bind"),
    # ports
    "master port privileged": (sub("port: 8080", "port: 80"), "master.port"),
    "master port too high": (sub("port: 8080", "port: 70000"), "master.port"),
    "rpc port privileged": (sub("rpc_port: 50053", "rpc_port: 22"), "rpc_port"),
    "rpc port string": (sub("rpc_port: 50053", "rpc_port: '50053; id'"), "rpc_port"),
    # the llama.cpp source: it reaches git fetch in the Dockerfile
    "git url newline": (sub("git: https://github.com/ggml-org/llama.cpp",
                            'git: "https://github.com/ggml-org/llama.cpp\\nRUN id"'), "not a git URL"),
    "git url space": (sub("git: https://github.com/ggml-org/llama.cpp", "git: 'https://x/y z'"), "not a git URL"),
    "git url option": (sub("git: https://github.com/ggml-org/llama.cpp", "git: --upload-pack=touch"), "not a git URL"),
    "git url file scheme": (sub("git: https://github.com/ggml-org/llama.cpp", "git: file:///etc"), "not a git URL"),
    "ref space": (sub("ref: b11434", "ref: 'b1 && id'"), "not a git ref"),
    "ref dots": (sub("ref: b11434", "ref: a..b"), "not a git ref"),
    "ref option": (sub("ref: b11434", "ref: --all"), "not a git ref"),
    "ref newline": (sub("ref: b11434", 'ref: "b1\\nRUN id"'), "not a git ref"),
    "source path newline": (sub("llama_cpp: {git: https://github.com/ggml-org/llama.cpp, ref: b11434}",
                                'llama_cpp: {path: "./x\\nRUN id"}'), "not a usable path"),
    # names: directories, services, --alias
    "host name traversal": (sub("- name: local", "- name: ../etc").replace("host: local", "host: ../etc"), "hosts\\[0\\].name"),
    "host name too long": (sub("- name: local", "- name: " + "h" * 70).replace("host: local", "host: " + "h" * 70),
                           "hosts\\[0\\].name"),
    "cluster name too long": (sub("name: hydra", "name: " + "c" * 41), "cluster.name"),
    "model name space": (GOOD.replace(MODEL_LINE, "  'my model': {file: gqa-q8.gguf}"), "model name"),
    "model name dollar": (GOOD.replace(MODEL_LINE, "  'm$HOME': {file: gqa-q8.gguf}"), "model name"),
    "device name newline": (device('name: "RTX\\nRUN id"'), "printable"),
    "bus id garbage": (device("bus_id: '0000;id'"), "bus_id"),
    # model files: they become -m /models/...
    "model file traversal": (GOOD.replace(MODEL_LINE, "  m: {file: ../../etc/passwd}"), "outside models"),
    "model file absolute": (GOOD.replace(MODEL_LINE, "  m: {file: /etc/passwd}"), "relative to models"),
    "model file dollar": (GOOD.replace(MODEL_LINE, "  m: {file: 'a$HOME.gguf'}"), "characters"),
    "model file newline": (GOOD.replace(MODEL_LINE, '  m: {file: "a\\nb.gguf"}'), "characters"),
    "model file option": (GOOD.replace(MODEL_LINE, "  m: {file: --version}"), "characters"),
    "mmproj traversal": (GOOD.replace(MODEL_LINE, "  m: {file: gqa-q8.gguf, mmproj: ../x.gguf}"), "outside models"),
    # numbers
    "nan memory": (sub("memory_gb: 4, threads: 2, rpc_port: 50052", "memory_gb: .nan, threads: 2, rpc_port: 50052"),
                   "finite"),
    "inf memory": (sub("memory_gb: 4, threads: 2, rpc_port: 50052", "memory_gb: .inf, threads: 2, rpc_port: 50052"),
                   "finite"),
    "huge memory": (sub("memory_gb: 4, threads: 2, rpc_port: 50052", "memory_gb: 1e12, threads: 2, rpc_port: 50052"),
                    "memory_gb"),
    "huge threads": (sub("threads: 2, rpc_port: 50052", "threads: 100000, rpc_port: 50052"), "threads"),
    "huge ctx": (GOOD.replace(MODEL_LINE, "  m: {file: gqa-q8.gguf, ctx: 1073741824}"), "ctx"),
    "huge parallel": (GOOD.replace(MODEL_LINE, "  m: {file: gqa-q8.gguf, parallel: 100000}"), "parallel"),
    "inf reserve": (device("reserve_gb: .inf"), "finite"),
    "negative power": (sub(W0, "{vendor: nvidia, vram_gb: 8, arch: sm_86, index: 0, power_limit_w: -5}"),
                       "power_limit_w"),
    "negative gid": (sub("address: 127.0.0.1", "address: 127.0.0.1\n    video_gid: -1"), "video_gid"),
    "huge link": (sub("address: 127.0.0.1", "address: 127.0.0.1\n    link_gbps: 1e9"), "link_gbps"),
    # GPUs that would silently share a service
    "gpu index twice": (sub(W0, "{vendor: nvidia, vram_gb: 8, arch: sm_86, index: 1}\n"
                                "      - {vendor: nvidia, vram_gb: 8, arch: sm_86, index: 1}"), "both nvidia GPU index 1"),
    "gpu index vs ordinal": (sub("models:", "  - name: gpu-box\n    address: 10.0.0.5\n"
                                 "    devices: [{vendor: nvidia, vram_gb: 8, arch: sm_86, index: 1},"
                                 " {vendor: nvidia, vram_gb: 8, arch: sm_86}]\nmodels:"), "give each its index"),
    # ssh: it reaches ssh and DOCKER_HOST
    "ssh option": (sub("address: 127.0.0.1", "address: 127.0.0.1\n    ssh: -oProxyCommand=touch/tmp/pwned"),
                   "not an ssh target"),
    "ssh space": (sub("address: 127.0.0.1", "address: 127.0.0.1\n    ssh: 'root@box id'"), "not an ssh target"),
    # YAML itself
    "duplicate key": (sub("port: 8080", "port: 8080\n  port: 8081"), "given twice"),
    "duplicate model": (GOOD.replace(MODEL_LINE, "  m: {file: gqa-q8.gguf}\n  m: {file: gqa-q8.gguf}"), "given twice"),
    "top level list": ("- 1\n- 2\n", "expected a mapping"),
    "top level string": ("just text\n", "expected a mapping"),
    "unhashable key": ("? [1, 2]\n: 3\n", "cluster.yaml"),
    "bad amd cdi type": (sub("address: 127.0.0.1", "address: 127.0.0.1\n    amd_cdi: maybe"), "amd_cdi"),
    "bad rpc server mode": (sub("address: 127.0.0.1", "address: 127.0.0.1\n    rpc_server: all"), "rpc_server"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_hostile_config(case, tmp_path, model_dir):
    text, expected = CONFIG_CASES[case]
    project(tmp_path, model_dir, text)
    one_line_failure(run_cli("generate", cwd=tmp_path), expected)
    nothing_generated(tmp_path)


def test_non_utf8_config(tmp_path):
    (tmp_path / "cluster.yaml").write_bytes(GOOD.encode().replace(b"hydra", b"hydr\xe4", 1))
    one_line_failure(run_cli("plan", cwd=tmp_path), "not UTF-8")


def test_config_is_a_directory(tmp_path):
    (tmp_path / "cluster.yaml").mkdir()
    one_line_failure(run_cli("plan", cwd=tmp_path), "not a regular file")


def test_config_is_a_fifo_and_nothing_hangs(tmp_path):
    os.mkfifo(tmp_path / "cluster.yaml")
    r = subprocess.run(["hydra-compose", "plan"], cwd=tmp_path, capture_output=True, text=True, timeout=20)
    one_line_failure(r, "not a regular file")


def test_huge_config(tmp_path):
    (tmp_path / "cluster.yaml").write_text("# x\n" * 400_000)
    one_line_failure(run_cli("plan", cwd=tmp_path), "larger than 1 MiB")


def test_deeply_nested_config(tmp_path):
    (tmp_path / "cluster.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    one_line_failure(run_cli("plan", cwd=tmp_path), "cluster.yaml")


# ---- GGUF headers: one-line errors, never a MemoryError or a hang ----

def hostile_gguf(path: Path, **kv: object) -> Path:
    """A llama GGUF whose header says what kv says (values of the wrong type included)."""
    w = gguf.GGUFWriter(str(path), "llama")
    meta = {"block_count": 2, "embedding_length": 64, "attention.head_count": 2, "context_length": 256}
    meta.update(kv)
    for key, value in meta.items():
        full = f"llama.{key}"
        if isinstance(value, str):
            w.add_string(full, value)
        elif isinstance(value, list):
            w.add_array(full, value)
        else:
            w.add_uint64(full, value)
    w.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


GGUF_CASES = {
    "zero layers": ({"block_count": 0}, "block_count is 0"),
    "a billion layers": ({"block_count": 10**9}, "block_count is 1000000000"),
    "huge embedding": ({"embedding_length": 2**40}, "embedding_length"),
    "head count as text": ({"attention.head_count": "many"}, "not a whole number"),
    "kv heads array too short": ({"attention.head_count_kv": [1]}, "has 1 entries for 2 layers"),
    "huge head count": ({"attention.head_count": 2**31}, "head_count"),
    "zero context": ({"context_length": 0}, "context_length"),
    "more experts used than exist": ({"expert_count": 2, "expert_used_count": 8}, "more than the 2 experts"),
    "huge context": ({"context_length": 2**40}, "context_length"),
}


@pytest.mark.parametrize("case", sorted(GGUF_CASES))
def test_hostile_gguf_header(case, tmp_path, model_dir):
    kv, expected = GGUF_CASES[case]
    project(tmp_path, model_dir, GOOD.replace(MODEL_LINE, "  m: {file: evil.gguf, default: true}"))
    hostile_gguf(tmp_path / "models" / "evil.gguf", **kv)
    one_line_failure(run_cli("plan", cwd=tmp_path), expected)
    one_line_failure(run_cli("models", cwd=tmp_path), expected)
    one_line_failure(run_cli("generate", cwd=tmp_path), expected)
    nothing_generated(tmp_path)


def test_model_that_is_a_directory(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD.replace(MODEL_LINE, "  m: {file: dir.gguf, default: true}"))
    (tmp_path / "models" / "dir.gguf").mkdir()
    one_line_failure(run_cli("plan", cwd=tmp_path), "not a regular file")
    one_line_failure(run_cli("models", cwd=tmp_path), "not a regular file")


def test_model_that_is_a_fifo_never_hangs(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD.replace(MODEL_LINE, "  m: {file: pipe.gguf, default: true}"))
    os.mkfifo(tmp_path / "models" / "pipe.gguf")
    for command in ("plan", "models", "generate"):
        r = subprocess.run(["hydra-compose", command], cwd=tmp_path, capture_output=True, text=True, timeout=20)
        one_line_failure(r, "not a regular file")
    nothing_generated(tmp_path)


def test_model_link_out_of_models(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD.replace(MODEL_LINE, "  m: {file: link.gguf, default: true}"))
    outside = tmp_path / "outside.gguf"
    shutil.copy(model_dir / "gqa-q8.gguf", outside)
    (tmp_path / "models" / "link.gguf").symlink_to(outside)
    one_line_failure(run_cli("generate", cwd=tmp_path), "outside")
    nothing_generated(tmp_path)


def test_model_in_a_subfolder_keeps_its_path(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD.replace(MODEL_LINE, "  m: {file: qwen/small.gguf, default: true}"))
    (tmp_path / "models" / "qwen").mkdir()
    shutil.copy(model_dir / "gqa-q8.gguf", tmp_path / "models" / "qwen" / "small.gguf")
    r = run_cli("generate", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    compose = yaml.safe_load((tmp_path / "compose" / "local" / "docker-compose.yml").read_text())
    command = compose["services"]["llama-server"]["command"]
    assert command[command.index("-m") + 1] == "/models/qwen/small.gguf"


def test_cli_model_name_with_odd_characters(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD)
    one_line_failure(run_cli("plan", "-m", "../x.gguf", cwd=tmp_path), "outside models", code=1)


# ---- generate: all or nothing across every host ----

def two_hosts() -> str:
    return sub("models:", "  - name: other\n    address: 10.0.0.7\n"
                          "    devices: [{vendor: cpu, memory_gb: 4, threads: 2}]\nmodels:")


def test_generate_writes_nothing_when_a_later_host_is_blocked(tmp_path, model_dir):
    project(tmp_path, model_dir, two_hosts())
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "other").write_text("a file where a folder must go")
    one_line_failure(run_cli("generate", cwd=tmp_path), "in the way")
    assert not (tmp_path / "dockerfiles").exists() and not (tmp_path / "compose" / "local").exists()


def test_generate_writes_nothing_when_a_target_is_a_directory(tmp_path, model_dir):
    project(tmp_path, model_dir, two_hosts())
    (tmp_path / "compose" / "other" / ".env").mkdir(parents=True)
    one_line_failure(run_cli("generate", cwd=tmp_path), "not a regular file")
    assert not (tmp_path / "dockerfiles").exists() and not (tmp_path / "compose" / "local").exists()


def test_generate_refuses_to_run_twice_at_once(tmp_path, model_dir):
    import fcntl

    project(tmp_path, model_dir, GOOD)
    with open(tmp_path / ".hydra-generate.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        one_line_failure(run_cli("generate", cwd=tmp_path), "another hydra-compose generate")
    nothing_generated(tmp_path)
    assert run_cli("generate", cwd=tmp_path).returncode == 0


def test_generate_rolls_back_when_a_move_fails(tmp_path, model_dir, monkeypatch):
    from hydra_compose.runtime import writer
    from hydra_compose.render.compose import RenderedFile

    (tmp_path / "a.txt").write_text("before\n")
    writer.write_files(tmp_path, [RenderedFile("a.txt", "before\n")], force=True)
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(writer.os, "replace", flaky)
    from hydra_compose.errors import OutputError

    with pytest.raises(OutputError, match="No space left"):
        writer.write_files(tmp_path, [RenderedFile("a.txt", "after\n"), RenderedFile("b/c.txt", "new\n")], force=True)
    monkeypatch.setattr(writer.os, "replace", real)
    assert (tmp_path / "a.txt").read_text() == "before\n" and not (tmp_path / "b" / "c.txt").exists()


# ---- what reaches a shell: the supervisor and the healthcheck ----

SUPERVISOR = ROOT / "hydra_compose" / "data" / "supervise.sh"


@pytest.mark.parametrize("rpc", ["127.0.0.1:1$(touch {m})", "x;touch {m};#:5", "`touch {m}`:1",
                                 "127.0.0.1:1,a b:2", "$(touch {m}):1"])
def test_supervisor_refuses_hostile_endpoints_and_runs_nothing(rpc, tmp_path):
    marker = tmp_path / "pwned"
    server = tmp_path / "server"
    server.write_text(f"#!/bin/sh\ntouch {tmp_path}/server-ran\n")
    server.chmod(0o755)
    r = subprocess.run(["bash", str(SUPERVISOR), "--rpc", rpc.format(m=marker), "--port", "1"], capture_output=True,
                       text=True, timeout=20, env={**os.environ, "HYDRA_SERVER_BIN": str(server)}, cwd=tmp_path)
    assert r.returncode == 2 and "invalid worker endpoint" in r.stderr
    assert not marker.exists() and not (tmp_path / "server-ran").exists()


def test_supervisor_probe_passes_values_as_arguments(tmp_path):
    """Even a value the validation lets through (a DNS name) is only an argument of the probe."""
    text = SUPERVISOR.read_text()
    assert 'bash -c "' not in text  # nothing is spliced into code
    probe = re.search(r"timeout 2 bash -c ('[^']*') probe", text)[1]
    marker = tmp_path / "pwned"
    r = subprocess.run(["bash", "-c", probe[1:-1], "probe", f"127.0.0.1/$(touch {marker})", "1"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and not marker.exists()


def test_healthcheck_passes_the_url_as_an_argument(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD)
    assert run_cli("generate", cwd=tmp_path).returncode == 0
    compose = yaml.safe_load((tmp_path / "compose" / "local" / "docker-compose.yml").read_text())
    test = compose["services"]["llama-server"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "bash"] and "http" not in test[3]  # the script holds no value
    marker = tmp_path / "pwned"
    script = test[3].replace("$$", "$")  # compose turns $$ back into $
    r = subprocess.run(["bash", "-c", script, "healthcheck", f"http://127.0.0.1:1/$(touch {marker})"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and not marker.exists()


def test_compose_values_never_interpolate(tmp_path):
    from hydra_compose.render.compose import _Dumper
    from hydra_compose.vendors.base import Interpolated

    text = yaml.dump({"a": "cost $5 ${HOME}", "b": Interpolated("${KEY:?set it}")}, Dumper=_Dumper)
    assert "cost $$5 $${HOME}" in text and "${KEY:?set it}" in text and "$${KEY" not in text


# ---- inspect: another machine's output is data, not config ----

def test_inspect_never_copies_a_hostile_address(tmp_path):
    from hydra_compose.inventory.discovery import merge
    from hydra_compose.inventory.discovery import InspectTarget, parse_report

    probe = ("==hostname\nevil;touch /tmp/p\n==addresses\nx;touch /tmp/p;#\n$(id)\n192.168.1.20\n"
             "==cores\n4\n==meminfo\nMemTotal: 8000000 kB\n==nvidia_smi\n0, RTX\\n4090, 24564, 8.9, 450, 150, 600, 0000:01:00.0\n"
             "==end\n")
    rep = parse_report(InspectTarget("ssh://root@box", "ssh://root@box"), probe)
    assert rep.addresses == ["192.168.1.20"] and rep.address == "192.168.1.20"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", rep.name)
    merged = merge({"master": {"host": "x"}, "hosts": []}, [rep])
    from hydra_compose.inventory.config import parse_config

    parse_config(yaml.safe_dump(merged))  # what --write would write is a valid inventory


def test_inspect_without_a_usable_address_refuses_to_write(tmp_path):
    from hydra_compose.inventory.discovery import merge
    from hydra_compose.inventory.config import parse_config
    from hydra_compose.errors import ConfigError
    from hydra_compose.inventory.discovery import InspectTarget, parse_report

    rep = parse_report(InspectTarget("ssh://root@box", "ssh://root@box"),
                       "==hostname\nbox\n==addresses\n$(id)\n==cores\n2\n==end\n")
    assert rep.address is None
    merged = merge({"master": {"host": "x"}, "hosts": []}, [rep])
    merged["hosts"][0]["address"] = rep.address or "$(id)"
    with pytest.raises(ConfigError):
        parse_config(yaml.safe_dump(merged))


# ---- bench and power-sweep against servers that misbehave ----

class Hostile:
    """An HTTP server answering every path with canned bytes."""

    def __init__(self, routes: dict[str, tuple[int, bytes]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def _answer(self):  # noqa: ANN202
                status, body = routes.get(self.path.split("?")[0], (404, b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", "text/event-stream" if self.command == "POST" else "application/json")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


MODELS_OK = (200, b'{"data": [{"id": "served-model"}]}')
STREAM_OK = (200, b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: {"choices": [{"delta": {"content": "b"}}]}\n\n'
             b'data: {"choices": [{"delta": {"content": "c"}}]}\n\n'
             b'data: {"choices": [], "usage": {"completion_tokens": 3}, "timings": {"predicted_per_second": 9}}\n\n'
             b"data: [DONE]\n\n")
BENCH_CASES = {
    "stream is not json": ({"/v1/chat/completions": (200, b"data: <html>\n\n")}, "not JSON"),
    "stream event is a list": ({"/v1/chat/completions": (200, b"data: [1, 2]\n\n")}, "unexpected event"),
    "stream timings not a dict": ({"/v1/chat/completions": (200, b'data: {"timings": 5}\n\n')}, "unexpected event"),
    "stream error event": ({"/v1/chat/completions": (200, b'data: {"error": {"message": "oom"}}\n\n')}, "reported an error"),
    "stream has no tokens": ({"/v1/chat/completions": (200, b"data: [DONE]\n\n")}, "streamed no tokens"),
    "stream has one token": ({"/v1/chat/completions": (200, b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n')},
                             "too few"),
    "server error": ({"/v1/chat/completions": (500, b'{"error": "boom"}')}, "answered 500"),
    "models not json": ({"/v1/models": (200, b"nope")}, "is not JSON"),
    "models empty": ({"/v1/models": (200, b'{"data": []}')}, "did not list a model"),
    "models id not text": ({"/v1/models": (200, b'{"data": [{"id": 5}]}')}, "did not list a model"),
    "models unauthorized": ({"/v1/models": (401, b"{}")}, "answered 401"),
}


@pytest.mark.parametrize("case", sorted(BENCH_CASES))
def test_bench_against_a_misbehaving_server(case, tmp_path):
    routes, expected = BENCH_CASES[case]
    server = Hostile({"/v1/models": MODELS_OK, **routes})
    try:
        r = run_cli("bench", "--url", server.url, "--runs", "1", "--max-tokens", "3", "--timeout", "10",
                    "--out", str(tmp_path / "out"), cwd=tmp_path)
    finally:
        server.close()
    one_line_failure(r, expected)
    assert not (tmp_path / "out").exists()  # no result files from a failed benchmark


def test_bench_url_alone_asks_the_server_for_its_model(tmp_path):
    server = Hostile({"/v1/models": MODELS_OK, "/v1/chat/completions": STREAM_OK})
    try:
        r = run_cli("bench", "--url", server.url, "--runs", "1", "--max-tokens", "3", "--json", cwd=tmp_path)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert '"model": "served-model"' in r.stdout


def test_bench_url_that_is_not_http(tmp_path):
    one_line_failure(run_cli("bench", "--url", "ftp://x", "--model", "m", cwd=tmp_path), "not an http", code=2)


def test_bench_failed_runs_exit_non_zero(tmp_path):
    from support.fake_server import FakeLlama

    server = FakeLlama(fail_after=1)
    try:
        r = run_cli("bench", "--url", server.url, "--model", "m", "--runs", "3", "--concurrency", "2",
                    "--max-tokens", "4", cwd=tmp_path)
    finally:
        server.close()
    one_line_failure(r, "runs failed")


def test_ssh_targets_cannot_smuggle_options():
    from hydra_compose.errors import PowerError
    from hydra_compose.runtime.ssh import ssh_argv

    for spec in ("-oProxyCommand=touch /tmp/p", "ssh://-oProxyCommand=x", "root@box;id", "root@box id"):
        with pytest.raises(PowerError):
            ssh_argv(spec, "true")
    argv = ssh_argv("ssh://root@box:2222", "nvidia-smi")
    assert argv[-3:] == ["--", "root@box", "nvidia-smi"]


# ---- status with broken files and garbage answers ----

def test_status_with_a_broken_compose_file(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD)
    assert run_cli("generate", cwd=tmp_path).returncode == 0
    (tmp_path / "compose" / "local" / "docker-compose.yml").write_text("services: [this is: {not compose")
    one_line_failure(run_cli("status", cwd=tmp_path), "not a compose file")


def test_status_reads_garbage_answers_without_crashing():
    from hydra_compose.commands.status import master_answers as _master_answers

    server = Hostile({"/health": (200, b"{}"), "/v1/models": (200, b"[garbage"), "/slots": (200, b'{"a": 1}'),
                      "/metrics": (200, b"llamacpp:predicted_tokens_seconds notanumber\n")})
    try:
        answers = _master_answers(server.url, {})
    finally:
        server.close()
    assert answers["healthy"] is True and answers.get("model") is None and "predicted_tokens_per_s" not in answers


def test_status_reads_garbage_compose_ps(monkeypatch, tmp_path):
    from hydra_compose.runtime import stacks as lifecycle
    from hydra_compose.inventory.config import parse_config
    from hydra_compose.errors import HydraError

    stack = lifecycle.Stack(parse_config(GOOD).hosts[0], tmp_path / "x.yml", True)
    monkeypatch.setattr(lifecycle.Stack, "compose",
                        lambda self, *a, **k: subprocess.CompletedProcess(a, 0, "{not json\n", ""))
    with pytest.raises(HydraError, match="printed something unexpected"):
        lifecycle.containers(stack)


def test_mmproj_that_is_not_a_projector(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD.replace(MODEL_LINE, "  m: {file: gqa-q8.gguf, mmproj: gqa-q8.gguf, default: true}"))
    one_line_failure(run_cli("generate", cwd=tmp_path), "not a vision projector")
    nothing_generated(tmp_path)


def test_unknown_experts_mode(tmp_path, model_dir):
    project(tmp_path, model_dir, GOOD)
    one_line_failure(run_cli("plan", "--experts", "ram", cwd=tmp_path), "--experts ram is unknown", code=2)
