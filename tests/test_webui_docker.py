"""The web UI in the master's image, in a real browser: the generated CPU cluster with an API key
(docker compose up --build on the generated file: our Dockerfile embeds llama.cpp's tools/ui),
headless Chromium opens http://127.0.0.1:8080/, meets the UI's API-key screen, enters the key
from .env the way a user does, types a question into the chat box and sees SmolLM2's reply on
screen. The screenshot goes to docs/webui-chat.png when HYDRA_UPDATE_DOCS=1."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import httpx
import pytest
import yaml

from conftest import REQUIRE_HEAVY, ROOT, run_cli
from test_e2e_docker import SOURCE, compose, cpu_project, hydra_containers  # noqa: F401 - fixture

pytestmark = pytest.mark.docker
URL = "http://127.0.0.1:8080"


@pytest.fixture
def chromium() -> None:
    if not shutil.which("chromium"):
        if REQUIRE_HEAVY:
            pytest.fail("chromium is missing: scripts/test.sh installs Debian's package")
        pytest.skip("chromium not installed")
    if not (SOURCE / "tools" / "ui" / "dist" / "index.html").exists():
        pytest.fail("the web UI is not built into the llama.cpp tree: run scripts/build-ui.sh")


def test_chat_in_the_browser_with_the_api_key(cpu_project, chromium, tmp_path):  # noqa: F811
    from support.browser import Browser

    proj = cpu_project
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["master"]["api_key"] = True
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=proj, env={"HYDRA_LLAMA_CPP_SOURCE": str(SOURCE)})
    assert r.returncode == 0, r.stderr
    key = re.search(r"^LLAMA_API_KEY=(\S+)$", (proj / "compose" / "local" / ".env").read_text(), re.M)[1]
    compose_file = proj / "compose" / "local" / "docker-compose.yml"
    browser = None
    try:
        compose(compose_file, "up", "-d", "--build", "--wait", "--wait-timeout", "600")
        page = httpx.get(f"{URL}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()  # the UI, served without the key
        browser = Browser(tmp_path / "chromium")
        browser.navigate(f"{URL}/")
        browser.wait_for("document.body.innerText.includes('Enter API Key')", 60)  # /props answered 401
        browser.click_text("button", "Enter API Key")
        browser.wait_for("!!document.querySelector('#api-key-input')", 20)
        browser.type_into("#api-key-input", key)
        browser.wait_for("!!document.querySelector('textarea')", 60)  # the chat screen, the key accepted
        # greedy decoding and a system turn, as a user sets them in Settings (the UI keeps its settings, the
        # key among them, in local storage): SmolLM2 at the UI's default temperature may answer in French
        assert browser.evaluate("""(() => { const k = 'LlamaUi.config';
            const c = JSON.parse(localStorage.getItem(k) || '{}');
            if (!c.apiKey) return false;
            c.temperature = 0; c.systemMessage = 'You are a helpful assistant.';
            localStorage.setItem(k, JSON.stringify(c)); return true; })()""")
        browser.navigate(f"{URL}/")
        browser.wait_for("!!document.querySelector('textarea')", 60)
        browser.type_into("textarea", "What is the capital of France?")
        browser.wait_for("document.body.innerText.includes('What is the capital of France?')", 30)
        reply = browser.wait_for("/paris/i.test(document.body.innerText.split("
                                 "'What is the capital of France?').slice(1).join(' '))", 180)
        assert reply
        text = browser.text()
        assert key not in text
        shot = tmp_path / "webui-chat.png"
        browser.screenshot(shot)
        assert shot.read_bytes().startswith(b"\x89PNG")
        if os.environ.get("HYDRA_UPDATE_DOCS"):
            shutil.copy(shot, ROOT / "docs" / "webui-chat.png")
        logs = subprocess.run(["docker", "compose", "-f", str(compose_file), "logs", "--no-color"],
                              capture_output=True, text=True).stdout
        assert key not in logs
    finally:
        if browser is not None:
            browser.close()
        compose(compose_file, "down", "-v", "--timeout", "5")
    assert hydra_containers() == []


def test_ui_false_serves_no_page(tmp_path):
    """ui: false: the Dockerfile embeds no UI and llama-server runs with --no-ui (golden-level check)."""
    from test_generate import example_project

    proj = example_project(tmp_path, "cpu-default")
    text = (proj / "cluster.yaml").read_text().replace("  port: 8080\n", "  port: 8080\n  ui: false\n", 1)
    (proj / "cluster.yaml").write_text(text)
    assert run_cli("generate", cwd=proj).returncode == 0
    dockerfile = (proj / "dockerfiles" / "cpu.Dockerfile").read_text()
    assert "AS ui" not in dockerfile and "rm -rf /src/tools/ui/dist" in dockerfile
    server = yaml.safe_load((proj / "compose" / "local" / "docker-compose.yml").read_text())["services"]["llama-server"]
    assert "--no-ui" in server["command"]
