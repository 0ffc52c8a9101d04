"""Users' API keys: declared in cluster.yaml or added with `keys add`, kept in the master's 0600
.env only, listed by fingerprint, revoked with `keys revoke`; generate keeps them. (The running
cluster's 401 for a revoked key is checked in tests/test_lifecycle_docker.py.)"""

from __future__ import annotations

import json
import re

import yaml

from conftest import run_cli
from test_generate import example_project


def keyed(tmp_path, names=("alice",)):  # noqa: ANN001, ANN201
    proj = example_project(tmp_path, "cpu-default")
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["master"].update(api_key=True, api_keys=list(names))
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 0, r.stderr
    return proj


def env_keys(proj) -> dict[str, str]:  # noqa: ANN001
    text = (proj / "compose" / "local" / ".env").read_text()
    return {m[1].lower(): m[2] for m in re.finditer(r"^HYDRA_KEY_([A-Z0-9_]+)=(\S+)$", text, re.M)}


def test_keys_live_in_the_env_only_and_are_never_printed(tmp_path):
    proj = keyed(tmp_path)
    env = proj / "compose" / "local" / ".env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    r = run_cli("keys", "add", "bob", "--no-apply", cwd=proj)
    assert r.returncode == 0, r.stderr
    keys = env_keys(proj)
    assert set(keys) == {"alice", "bob"} and all(len(k) >= 32 for k in keys.values())
    text = env.read_text()
    admin = re.search(r"^LLAMA_API_KEY=(\S+)$", text, re.M)[1]
    # llama-server gets the cluster's key first, then the users'
    assert re.search(r"^HYDRA_USER_KEYS=(\S+)$", text, re.M)[1] == f",{keys['alice']},{keys['bob']}"
    compose = (proj / "compose" / "local" / "docker-compose.yml").read_text()
    assert "${LLAMA_API_KEY:?set LLAMA_API_KEY in .env}${HYDRA_USER_KEYS:-}" in compose
    listed = run_cli("keys", "list", "--json", cwd=proj)
    data = json.loads(listed.stdout)
    assert [k["name"] for k in data["keys"]] == ["alice", "bob"]
    assert all(k["fingerprint"].startswith("sha256:") for k in data["keys"])
    for key in (*keys.values(), admin):
        assert key not in r.stdout + r.stderr + listed.stdout
        for path in proj.rglob("*"):
            if path.is_file() and path != env and path.suffix != ".gguf":
                assert key not in path.read_text(errors="replace"), path
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    # generate keeps keys added by hand, and says nothing was edited
    again = run_cli("generate", cwd=proj)
    assert again.returncode == 0, again.stderr
    assert env_keys(proj) == keys


def test_revoke_removes_the_key_and_warns_about_cluster_yaml(tmp_path):
    proj = keyed(tmp_path, ("alice", "carol"))
    before = env_keys(proj)
    r = run_cli("keys", "revoke", "carol", "--no-apply", cwd=proj)
    assert r.returncode == 1 and "still lists it under master.api_keys" in r.stderr  # one line, exit 1
    assert set(env_keys(proj)) == {"alice"}
    assert before["carol"] not in (proj / "compose" / "local" / ".env").read_text()
    r = run_cli("keys", "revoke", "nobody", "--no-apply", cwd=proj)
    assert r.returncode == 2 and "no key named nobody" in r.stderr


def test_bad_key_input_is_one_line(tmp_path):
    proj = keyed(tmp_path)
    for argv, message in ((["keys", "add", "Bad Name", "--no-apply"], "not usable"),
                          (["keys", "add", "alice", "--no-apply"], "exists")):
        r = run_cli(*argv, cwd=proj)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["master"]["api_key"] = False
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 1 and "api_keys needs api_key: true" in r.stderr


def test_keys_leave_the_other_generated_files_alone(tmp_path):
    """Rewriting the .env touches nothing else generate wrote: not the supervisor's fallback plans."""
    proj = example_project(tmp_path, "cpu-default")
    cfg = yaml.safe_load((proj / "cluster.yaml").read_text())
    cfg["master"]["api_key"] = True
    cfg["hosts"].append({"name": "box", "address": "127.0.0.2",
                         "devices": [{"vendor": "cpu", "memory_gb": 4, "threads": 2, "rpc_port": 50054}]})
    (proj / "cluster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert run_cli("generate", cwd=proj).returncode == 0
    before = {p: p.read_text() for p in (proj / "compose").rglob("*") if p.is_file() and p.name != ".env"}
    assert any("/fallback/" in str(p) for p in before)
    assert run_cli("keys", "add", "dave", "--no-apply", cwd=proj).returncode == 0
    assert {p: p.read_text() for p in (proj / "compose").rglob("*") if p.is_file() and p.name != ".env"} == before
