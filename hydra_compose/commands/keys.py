"""keys: the users' API keys of the master (add, list, revoke). Each lives only in the master's
0600 .env; none is ever printed (list shows fingerprints). A change restarts llama-server alone,
and only when asked to apply it (the default): workers keep running."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from ..errors import ConfigError, UsageError
from ..render.compose import USER_KEY_PREFIX, user_key_lines
from ..render.common import RenderedFile
from ..runtime.stacks import stacks, server_services
from ..runtime.writer import write_files
from .context import Project
from .generate import existing_key, existing_user_keys

NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class KeyInfo:
    name: str
    fingerprint: str  # sha256 of the key, first 12 hex digits: tells keys apart, reveals nothing


@dataclass(frozen=True)
class KeysResult:
    keys: tuple[KeyInfo, ...]
    env_file: str
    changed: str | None = None  # "added alice" / "revoked alice"
    restarted: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"version": 1, "env_file": self.env_file, "changed": self.changed,
                "keys": [{"name": k.name, "fingerprint": k.fingerprint} for k in self.keys],
                "restarted": list(self.restarted)}


def fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _env(project: Project):  # noqa: ANN202
    cfg = project.config
    if cfg.cluster.target != "compose":
        raise ConfigError("keys manages the compose target's .env", "on Kubernetes, edit k8s/api-key.env "
                          "(LLAMA_API_KEY=key1,key2) and kubectl apply -k k8s/")
    env = project.root / "compose" / cfg.master.host / ".env"
    if not cfg.master.api_key or existing_key(env) is None:
        raise ConfigError(f"{env} has no cluster key", "set master.api_key: true in cluster.yaml and run generate")
    return env


def _result(env, users: dict[str, str], changed: str | None = None, restarted: tuple[str, ...] = ()) -> KeysResult:  # noqa: ANN001
    return KeysResult(tuple(KeyInfo(n, fingerprint(k)) for n, k in sorted(users.items())), str(env), changed,
                      restarted)


def list_keys(project: Project) -> KeysResult:
    env = _env(project)
    return _result(env, existing_user_keys(env))


def _write(project: Project, env, users: dict[str, str]) -> None:  # noqa: ANN001
    """The .env with its users' block replaced, through the writer (atomic, 0600, manifest kept)."""
    text = env.read_text()
    kept = [line for line in text.splitlines() if not line.startswith((USER_KEY_PREFIX, "HYDRA_USER_KEYS="))
            and line != "# users' API keys (hydra-compose keys add|list|revoke)"]
    new = "\n".join(kept + user_key_lines(users)) + "\n"
    rel = str(env.relative_to(project.root))
    write_files(project.root, [RenderedFile(rel, new, 0o600)], force=False, sweep=False)


def _restart(project: Project, apply: bool) -> tuple[str, ...]:
    if not apply:
        return ()
    master = next(s for s in stacks(project) if s.is_master)
    # compose recreates llama-server alone (each replica: their environment changed); --no-deps leaves
    # the workers be
    servers = server_services(master)
    master.checked("up", "-d", "--no-deps", "--wait", "--wait-timeout", "900", *servers)
    return tuple(f"{master.host.name}/{s}" for s in servers)


def add(project: Project, name: str, apply: bool) -> KeysResult:
    if not NAME.match(name):
        raise UsageError(f"key name {name!r} is not usable", "use a lowercase letter, then letters, digits or '_' "
                         "(up to 32)")
    env = _env(project)
    users = existing_user_keys(env)
    if name in users:
        raise UsageError(f"a key named {name} exists", f"revoke it first (hydra-compose keys revoke {name})")
    users[name] = secrets.token_urlsafe(32)
    _write(project, env, users)
    return _result(env, users, f"added {name}", _restart(project, apply))


def revoke(project: Project, name: str, apply: bool) -> KeysResult:
    env = _env(project)
    users = existing_user_keys(env)
    if name not in users:
        known = ", ".join(sorted(users)) or "none"
        raise UsageError(f"no key named {name} (keys: {known})", "hydra-compose keys list shows them")
    del users[name]
    _write(project, env, users)
    result = _result(env, users, f"revoked {name}", _restart(project, apply))
    if name in project.config.master.api_keys:  # generate would make it a new key
        raise ConfigError(f"revoked {name}, but cluster.yaml still lists it under master.api_keys",
                          "remove it there, or the next generate issues a new key under that name")
    return result
