"""Which image each host builds: the vendor toolkit release its GPUs still run on,
their archs, one llama.cpp ref for all; and the Dockerfiles (Jinja) they build from.

One Dockerfile per vendor; the release and the GPU targets are build arguments
that each host's compose file sets, so an MI50 host can build on ROCm 6.3 while
a 7900 XTX host builds on 6.4, both from the same llama.cpp commit. The vendor
records pick the release (vendors/*.py).
"""

from __future__ import annotations

from pathlib import Path

from .. import vendors
from ..inventory.config import ClusterConfig, Host
from ..inventory.topology import master_vendor
from ..vendors.base import CPU_FLAGS, ImageSpec
from .templates import render_template


def host_image(host: Host, vendor: str) -> ImageSpec:
    record = vendors.get(vendor)
    return record.image(host, [d for d in host.devices if d.vendor == vendor])


def host_vendors(cfg: ClusterConfig, host: Host) -> list[str]:
    """The vendors a host builds images for: its devices', and on the master host llama-server's."""
    names = {d.vendor for d in host.devices}
    if host.name == cfg.master.host:
        names.add(master_vendor(cfg))
    return [v.name for v in vendors.ALL if v.name in names]


def all_images(cfg: ClusterConfig) -> dict[tuple[str, str], ImageSpec]:
    """(host, vendor) -> what that host builds; checked for every host before anything renders."""
    out = {}
    for host in cfg.hosts:
        if host.runtime != "docker":
            continue  # native hosts install llama.cpp themselves (render/native.py)
        for vendor in host_vendors(cfg, host):
            out[(host.name, vendor)] = host_image(host, vendor)
    return out


def dockerfile_name(vendor: str) -> str:
    return f"{vendors.get(vendor).dockerfile}.Dockerfile"


UI_IMAGE = "debian:trixie-slim"  # Node.js 20.19, what the web UI's Vite 7 needs
BALANCER_IMAGE = "debian:bookworm-slim"  # HAProxy 2.6 LTS; small whatever the vendor's runtime image is


def render_dockerfiles(cfg: ClusterConfig, header: str, user_templates: Path | None) -> list[tuple[str, str]]:
    """(path, text) per vendor. Defaults are those of the first host of the vendor; every
    host's compose file passes its own release and targets as build arguments."""
    src = cfg.cluster.llama_cpp
    images = all_images(cfg)
    files = []
    for record in vendors.ALL:
        specs = [spec for (_, v), spec in images.items() if v == record.name]
        if not specs:
            continue
        first = specs[0]
        ctx = dict(header=header, vendor=record.name, llama_cpp_git=src.git_url, llama_cpp_ref=src.git_ref,
                   cpu_flags=CPU_FLAGS, build_image=first.build_image, runtime_image=first.runtime_image,
                   vendor_title=record.title, releases=sorted({s.release for s in specs if s.release}),
                   ui=cfg.master.ui, ui_image=UI_IMAGE, balancer_image=BALANCER_IMAGE,
                   **record.template_context(first, specs))
        name = dockerfile_name(record.name)
        files.append((f"dockerfiles/{name}", render_template(f"{name}.j2", ctx, user_templates)))
    return files
