from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hydra_compose.cli import app
from support.paths import CACHE, NATIVE_BIN, ROOT, gemma3_path, smollm2_path  # noqa: F401 - re-exported
from support.synthetic import ARCH_SHAPES, TEST_SHAPES, write_gguf

# In CI the heavy parts must run: a missing build is a failure there, not a skip.
REQUIRE_HEAVY = os.environ.get("HYDRA_REQUIRE_HEAVY") == "1"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """No test reads the developer's config, home or llama.cpp source setting."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("HYDRA_CONFIG", "HYDRA_LLAMA_CPP_SOURCE", "HYDRA_SSH_CONFIG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    for shape in TEST_SHAPES + ARCH_SHAPES:
        write_gguf(d / f"{shape.name}.gguf", shape)
    return d


@pytest.fixture(scope="session")
def native_bin() -> Path:
    bin_dir = NATIVE_BIN
    if not (bin_dir / "llama-server").exists():
        if REQUIRE_HEAVY:
            pytest.fail("native llama.cpp build missing: scripts/build-llama-native.sh did not run")
        pytest.skip("native llama.cpp not built (scripts/build-llama-native.sh)")
    return bin_dir


def docker_ready() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def compose_cli() -> None:
    if not docker_ready():
        if REQUIRE_HEAVY:
            pytest.fail("docker compose missing: scripts/docker-setup.sh did not run")
        pytest.skip("docker compose not installed")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str, cwd: Path | None = None):
    """Runs the CLI the way users do, with our top-level error handling."""
    old = Path.cwd()
    if cwd:
        os.chdir(cwd)
    try:
        return runner.invoke(app, list(args), catch_exceptions=True)
    finally:
        os.chdir(old)


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["hydra-compose", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
