"""What a value from cluster.yaml, inspect or a GGUF may look like before it
reaches a compose file, a Dockerfile, a shell or a path.

Each check returns the value or raises ValueError with the text users read.
They are strict on purpose: addresses end up in `--rpc` and healthchecks, refs
in `git fetch`, names in directory and service names.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$")
_SCP_GIT = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._/~-]+$")
_URL_GIT = re.compile(r"^(https?|ssh|git)://[A-Za-z0-9._~@:%/+-]+$")
_SSH = re.compile(r"^(?:ssh://)?(?:[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,199}$")
WILDCARD = "0.0.0.0"


def _is_dns_name(value: str) -> bool:
    if len(value) > 253 or value.endswith(".") or re.fullmatch(r"[0-9.]+", value):
        return False  # all-numeric names are malformed IPv4 addresses, not hosts
    return all(_LABEL.match(label) for label in value.split("."))


def address(value: str) -> str:
    """A host the master dials: an IPv4 address or a DNS name (never a wildcard)."""
    if value == WILDCARD or value in ("", "::"):
        raise ValueError(f"{value!r} is not an address to connect to; give the host's LAN IPv4 address or DNS name")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        if _is_dns_name(value):
            return value
        raise ValueError(f"{value!r} is not an IPv4 address or DNS name") from None
    if ip.version == 6:
        raise ValueError(f"{value!r} is IPv6; llama.cpp's --rpc takes host:port, so use an IPv4 address or a DNS name")
    return value


def bind_address(value: str) -> str:
    """What a server listens on: an address, or 0.0.0.0 when asked for explicitly."""
    return value if value == WILDCARD else address(value)


def git_url(value: str) -> str:
    if value.startswith("-") or not (_URL_GIT.match(value) or _SCP_GIT.match(value)):
        raise ValueError(f"{value!r} is not a git URL (https://..., ssh://... or user@host:path, no spaces)")
    return value


def git_ref(value: str) -> str:
    if not _REF.match(value) or ".." in value or value.endswith((".lock", "/", ".")):
        raise ValueError(f"{value!r} is not a git ref (a tag like b11434, a branch or a commit hash)")
    return value


def ssh_target(value: str) -> str:
    m = _SSH.match(value)
    if value.startswith("-") or not m or not _is_dns_name(m["host"]) and not is_ipv4(m["host"]):
        raise ValueError(f"{value!r} is not an ssh target (user@host or ssh://user@host:port)")
    if m["port"] and not 1 <= int(m["port"]) <= 65535:
        raise ValueError(f"{value!r}: port {m['port']} is out of range")
    return value


def is_ipv4(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).version == 4
    except ValueError:
        return False


def model_name(value: str) -> str:
    if not _MODEL_NAME.match(value):
        raise ValueError(f"model name {value!r}: use up to 64 letters, digits, '.', '_', ':' and '-'")
    return value


def display_name(value: str) -> str:
    """Free text shown in tables (a GPU's marketing name): printable, one line, short."""
    if _CONTROL.search(value) or len(value) > 128:
        raise ValueError("use one line of at most 128 printable characters")
    return value


def file_in_models(value: str) -> str:
    """A file below models/: relative, no '..', plain characters (it becomes -m /models/...)."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or "\\" in value:
        raise ValueError(f"{value!r} must be a path relative to models/ (e.g. Qwen3-8B-Q4_K_M.gguf or qwen/q.gguf)")
    if any(part == ".." for part in path.parts):
        raise ValueError(f"{value!r} points outside models/; put the file into models/ and name it from there")
    bad = [part for part in path.parts if not _PATH_PART.match(part)]
    if bad:
        raise ValueError(f"{value!r}: {bad[0]!r} has characters we do not pass to llama-server "
                         "(use letters, digits, space, '.', '_', '+' and '-')")
    return value


def local_path(value: str) -> str:
    if not value or _CONTROL.search(value) or value.startswith("-"):
        raise ValueError(f"{value!r} is not a usable path (one line, not starting with '-')")
    return value
