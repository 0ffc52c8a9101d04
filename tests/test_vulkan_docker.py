"""The Vulkan image for real: built by our Dockerfile from the generated compose file, run on
Mesa's software Vulkan device (lavapipe: there is no GPU here), serving layers to llama-server
over RPC. GGML_VK_VISIBLE_DEVICES=0 makes llama.cpp take lavapipe, which it skips by default;
the card's render node is reset in a test override (no /dev/dri on this machine)."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from conftest import run_cli, smollm2_path
from support.localrun import free_port, loopback_cluster
from support.paths import LLAMA_CPP_SOURCE
from test_e2e_docker import compose, hydra_containers

from hydra_compose.runtime.rpc_hello import hello

pytestmark = pytest.mark.docker

OVERRIDE = """services:
  rpc-vulkan0:
    devices: !reset []
    group_add: !reset []
    environment:
      GGML_VK_VISIBLE_DEVICES: "0"
"""


def test_vulkan_worker_on_lavapipe(tmp_path, compose_cli, native_bin):
    port = free_port()
    (tmp_path / "models").mkdir()
    shutil.copy(smollm2_path(), tmp_path / "models" / "smollm2.gguf")
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "cluster": {"name": "vk", "llama_cpp": {"ref": "b11434"}},
        "master": {"host": "front", "port": free_port()},
        "hosts": [{"name": "front", "address": "127.0.0.1", "devices": []},
                  {"name": "arc", "address": "127.0.0.2", "video_gid": 44, "render_gid": 44, "devices": [
                      {"vendor": "vulkan", "name": "lavapipe", "vram_gb": 2, "index": 0, "rpc_port": port}]}],
        "models": {"smollm2": {"file": "smollm2.gguf", "ctx": 1024}}}))
    r = run_cli("generate", cwd=tmp_path, env={"HYDRA_LLAMA_CPP_SOURCE": str(LLAMA_CPP_SOURCE)})
    assert r.returncode == 0, r.stderr
    stack = tmp_path / "compose" / "arc" / "docker-compose.yml"
    (tmp_path / "override.yml").write_text(OVERRIDE)
    files = ["-f", str(stack), "-f", str(tmp_path / "override.yml")]
    try:
        compose(files[1], *files[2:], "up", "-d", "--build", "--wait", "--wait-timeout", "300", timeout=3000)
        assert hello("127.0.0.2", port).version == (7, 0, 0)
        logs = subprocess.run(["docker", "compose", *files, "logs", "--no-color"], capture_output=True, text=True).stdout
        assert "llvmpipe" in logs  # the worker serves Mesa's Vulkan device, not a CPU fallback
        with loopback_cluster(native_bin, tmp_path / "run") as cluster:
            url = cluster.start_server(smollm2_path(), ["--rpc", f"127.0.0.2:{port}", "-ngl", "99", "-c", "1024"],
                                       timeout=300)
            start = time.monotonic()
            reply = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
                "messages": [{"role": "system", "content": "You are a helpful assistant."},
                             {"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 16, "temperature": 0}).json()
            text = reply["choices"][0]["message"]["content"]
            print(f"Vulkan (lavapipe) worker: {text!r}, {reply['timings']['predicted_per_second']:.1f} tok/s, "
                  f"{time.monotonic() - start:.1f} s")
            assert "paris" in text.lower()
    finally:
        subprocess.run(["docker", "compose", *files, "down", "-v", "--timeout", "5"], capture_output=True)
    assert hydra_containers() == []
