"""A worker host on another network, made by the test itself: a network namespace joined to this
one by a veth pair, optionally rate-limited with tbf on both ends (this kernel has tbf but no
netem: latency comes from support/delay_proxy.py). Needs root and iproute2; removed on exit."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class LinkNamespace:
    name: str
    host_address: str  # this side of the veth
    address: str  # the namespace's side: where a worker inside listens

    def argv(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def link_namespace(index: int, rate_mbit: float | None = None) -> Iterator[LinkNamespace]:
    name = f"hydra{os.getpid() % 10000}n{index}"
    host_if, ns_if = f"hv{os.getpid() % 10000}{index}", f"nv{os.getpid() % 10000}{index}"
    subnet = f"10.{200 + index % 50}.{os.getpid() % 250}"
    ns = LinkNamespace(name, f"{subnet}.1", f"{subnet}.2")
    try:
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", name)
        _run("ip", "addr", "add", f"{ns.host_address}/24", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns.address}/24", "dev", ns_if)
        _run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        if rate_mbit:
            burst = max(32, int(rate_mbit * 1000 / 8 / 100))  # kbit: ~10 ms of the rate
            for prefix, dev in (((), host_if), (("ip", "netns", "exec", name), ns_if)):
                _run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                     "burst", f"{burst}kbit", "latency", "200ms")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
