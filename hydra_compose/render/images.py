"""Which image each host builds: the vendor toolkit release its GPUs still run on,
their archs, one llama.cpp ref for all; and the Dockerfiles (Jinja) they build from.

One Dockerfile per vendor; the release and the GPU targets are build arguments
that each host's compose file sets, so an MI50 host can build on ROCm 6.3 while
a 7900 XTX host builds on 6.4, both from the same llama.cpp commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..inventory.config import ClusterConfig, Host
from ..errors import RenderError
from ..inventory.topology import master_vendor

CPU_FLAGS = "-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
UBUNTU_VERSION = "24.04"
CPU_IMAGE = "debian:bookworm-slim"

# CUDA releases we pick from, newest first, and the archs each one still builds.
# sm_50..sm_72 were dropped in CUDA 13; sm_100/sm_120 need 12.8; Kepler left with 12.0.
CUDA_RELEASES = (("13.0.1", 75, 121), ("12.9.1", 50, 121), ("12.8.1", 50, 120), ("12.6.3", 50, 90),
                 ("11.8.0", 35, 90))
# ROCm releases, newest first, and the targets each one no longer ships kernels for:
# rocBLAS in 6.4 dropped gfx906 (MI50/MI60/Radeon VII); RDNA4 (gfx120x) needs 6.4.
ROCM_RELEASES = (("6.4.4", frozenset({"gfx803", "gfx900", "gfx906"})),
                 ("6.3.4", frozenset({"gfx803", "gfx1200", "gfx1201"})))


def _sm(arch: str) -> int:
    return int(re.match(r"sm_(\d+)", arch).group(1))  # type: ignore[union-attr]


def cuda_release(archs: list[str]) -> str:
    nums = [_sm(a) for a in archs]
    for version, lo, hi in CUDA_RELEASES:
        if all(lo <= n <= hi for n in nums):
            return version
    old = [a for a in archs if _sm(a) < 50]
    raise RenderError(f"no CUDA release builds all of {', '.join(sorted(set(archs)))} in one image",
                      f"serve {', '.join(old) or 'the oldest cards'} with another llama.cpp build, "
                      "or leave them out of cluster.yaml")


def rocm_release(archs: list[str]) -> str:
    for version, dropped in ROCM_RELEASES:
        if not dropped & set(archs):
            return version
    raise RenderError(f"no ROCm release runs all of {', '.join(sorted(set(archs)))} in one image",
                      "put these cards on different hosts (each host gets its own ROCm release), "
                      "or leave the oldest out of cluster.yaml")


@dataclass(frozen=True)
class ImageSpec:
    """What one host builds for one vendor (its rpc and server targets share the build)."""

    vendor: str
    release: str | None  # CUDA or ROCm version; None for CPU
    archs: tuple[str, ...]  # CUDA compute capabilities ("61", "86") or gfx targets

    @property
    def build_image(self) -> str:
        if self.vendor == "nvidia":
            return f"nvidia/cuda:{self.release}-devel-ubuntu{self.ubuntu}"
        if self.vendor == "amd":
            return f"rocm/dev-ubuntu-{UBUNTU_VERSION}:{self.release}-complete"
        return CPU_IMAGE

    @property
    def runtime_image(self) -> str:
        if self.vendor == "nvidia":
            return f"nvidia/cuda:{self.release}-runtime-ubuntu{self.ubuntu}"
        return self.build_image

    @property
    def ubuntu(self) -> str:
        return "22.04" if (self.release or "").startswith("11.") else UBUNTU_VERSION

    @property
    def tag(self) -> str:
        """Names the build: vendor, release and targets (e.g. rocm6.3.4-gfx906, cuda12.9.1-sm61.86)."""
        if self.vendor == "cpu":
            return "cpu"
        if self.vendor == "nvidia":
            return f"cuda{self.release}-sm{'.'.join(self.archs)}"
        return f"rocm{self.release}-{'.'.join(self.archs)}"

    def build_args(self) -> dict[str, str]:
        if self.vendor == "cpu":
            return {}
        targets = ";".join(self.archs)
        return {"BUILD_IMAGE": self.build_image, "RUNTIME_IMAGE": self.runtime_image,
                **({"CUDA_ARCHITECTURES": targets} if self.vendor == "nvidia" else {"GPU_TARGETS": targets})}


def _devices_needing(host: Host, vendor: str) -> list:
    devices = [d for d in host.devices if d.vendor == vendor]
    missing = [d.name or f"index {d.index}" for d in devices if not d.arch]
    if missing:
        example = "sm_XX" if vendor == "nvidia" else "gfxNNNN"
        raise RenderError(f"{vendor.upper() if vendor == 'amd' else 'NVIDIA'} device {missing[0]} on {host.name} has no arch",
                          f"add arch: {example} to it in cluster.yaml (or run `hydra-compose inspect --write`)")
    return devices


def host_image(cfg: ClusterConfig, host: Host, vendor: str) -> ImageSpec:
    if vendor == "cpu":
        return ImageSpec("cpu", None, ())
    archs = [d.arch for d in _devices_needing(host, vendor)]
    if vendor == "nvidia":
        return ImageSpec("nvidia", cuda_release(archs), tuple(sorted({str(_sm(a)) for a in archs}, key=int)))
    return ImageSpec("amd", rocm_release(archs), tuple(sorted(set(archs))))


def host_vendors(cfg: ClusterConfig, host: Host) -> list[str]:
    """The vendors a host builds images for: its devices', and on the master host llama-server's."""
    vendors = {d.vendor for d in host.devices}
    if host.name == cfg.master.host:
        vendors.add(master_vendor(cfg))
    return [v for v in ("cpu", "nvidia", "amd") if v in vendors]


def all_images(cfg: ClusterConfig) -> dict[tuple[str, str], ImageSpec]:
    """(host, vendor) -> what that host builds; checked for every host before anything renders."""
    out = {}
    for host in cfg.hosts:
        for vendor in host_vendors(cfg, host):
            out[(host.name, vendor)] = host_image(cfg, host, vendor)
    return out


def dockerfile_name(vendor: str) -> str:
    return {"cpu": "cpu", "nvidia": "cuda", "amd": "rocm"}[vendor] + ".Dockerfile"


def _jinja_env(user_templates: Path | None):  # noqa: ANN202 - jinja2 is imported lazily
    import jinja2

    loaders = []
    if user_templates is not None and user_templates.is_dir():
        loaders.append(jinja2.FileSystemLoader(str(user_templates)))
    loaders.append(jinja2.PackageLoader("hydra_compose", "templates"))
    return jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def render_dockerfiles(cfg: ClusterConfig, header: str, user_templates: Path | None) -> list[tuple[str, str]]:
    """(path, text) per vendor. Defaults are those of the first host of the vendor; every
    host's compose file passes its own release and targets as build arguments."""
    env = _jinja_env(user_templates)
    src = cfg.cluster.llama_cpp
    images = all_images(cfg)
    files = []
    for vendor in ("cpu", "nvidia", "amd"):
        specs = [spec for (_, v), spec in images.items() if v == vendor]
        if not specs:
            continue
        first = specs[0]
        ctx = dict(header=header, vendor=vendor, llama_cpp_git=src.git_url, llama_cpp_ref=src.git_ref,
                   cpu_flags=CPU_FLAGS, build_image=first.build_image, runtime_image=first.runtime_image,
                   vendor_title={"cpu": "CPU", "nvidia": "NVIDIA CUDA", "amd": "AMD ROCm"}[vendor],
                   releases=sorted({s.release for s in specs if s.release}))
        if vendor == "nvidia":
            ctx.update(cuda_version=first.release, cuda_architectures=";".join(first.archs))
        elif vendor == "amd":
            ctx.update(gpu_targets=";".join(first.archs))
        files.append((f"dockerfiles/{dockerfile_name(vendor)}",
                      env.get_template(dockerfile_name(vendor) + ".j2").render(**ctx)))
    return files
