"""What every vendor record answers. The planner, the renderer, inspect and the power
sweep ask a record (vendors.get(name)) instead of comparing vendor strings, so a
new kind of machine is one new module here.

Records import nothing from the rest of the package but errors: they receive hosts
and devices (cluster.yaml's models) as plain arguments.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import RenderError

if TYPE_CHECKING:
    from ..inventory.config import Device, Host

UBUNTU_VERSION = "24.04"
CPU_IMAGE = "debian:bookworm-slim"
# x86 baseline for images meant for other machines (GGML_NATIVE=OFF)
CPU_FLAGS = "-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"


class Interpolated(str):
    """A compose value whose ${VAR} we mean (from .env); the renderer writes every other '$'
    as '$$', so no value from cluster.yaml is ever interpolated by compose."""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as a host's tools describe it (inspect)."""

    vendor: str
    name: str
    arch: str | None
    vram_mib: int | None
    index: int
    bus_id: str | None = None
    power_limit_w: float | None = None
    power_min_w: float | None = None
    power_max_w: float | None = None
    render_node: str | None = None  # renderD128 ...: the card's /dev/dri node (sysfs, matched by PCI bus id)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeviceUsage:
    """What a vendor's tool says one device uses now (None: not reported)."""

    used_mib: float | None
    util_pct: float | None = None
    power_w: float | None = None
    temp_c: float | None = None


class ParseError(ValueError):
    """A tool printed something we do not understand."""


@dataclass(frozen=True)
class ImageSpec:
    """What one host builds for one vendor (its rpc and server targets share the build)."""

    vendor: str
    release: str | None  # toolkit version (CUDA, ROCm); None where there is none
    archs: tuple[str, ...]  # GPU targets as the toolkit spells them ("61", "gfx906")
    build_image: str
    runtime_image: str
    tag: str  # names the build: cuda12.9.1-sm61.86, rocm6.3.4-gfx906, vulkan, cpu
    build_args: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()  # what generate should warn about (e.g. a driver nobody recorded)


@dataclass(frozen=True)
class NativeBuild:
    """How a native worker host gets llama.cpp at the cluster's ref: an official release archive
    where one exists for its OS and backend ({ref} in the names), else a build from source."""

    archives: tuple[str, ...]  # the first holds the binaries; more: runtime libraries beside them (cudart)
    cmake_flags: str  # for the source build


@dataclass(frozen=True)
class Limits:
    current_w: float
    min_w: float
    max_w: float


Sample = tuple[float, float, float]  # power W, temperature °C, clock MHz


class PowerControl:
    """Reads and sets one GPU's power limit through its vendor tool; target runs argv here or over ssh
    (runtime.ssh.Target: .host, .run(argv) -> stdout, .argv(argv) -> the argv to spawn)."""

    vendor = ""
    probe_argv: list[str] = []  # answers when the vendor's tool is installed

    def __init__(self, target, index: int) -> None:  # noqa: ANN001 - runtime.ssh.Target
        self.target, self.index = target, index

    @property
    def label(self) -> str:
        return f"{self.target.host}:{self.vendor}:{self.index}"

    def read(self) -> Limits:
        raise NotImplementedError

    def set(self, watts: float) -> None:
        raise NotImplementedError

    def sampler_argv(self) -> list[str]:
        """A command that prints one sample per line until terminated."""
        raise NotImplementedError

    def parse_sample(self, line: str) -> Sample | None:
        raise NotImplementedError


class Vendor:
    """One kind of device: how llama.cpp names it, how images are built for it, how a
    container reaches it, how inspect finds it and how its power limit is set."""

    name = ""  # cluster.yaml's `vendor:`
    title = ""  # for Dockerfile comments
    backend = ""  # ggml's device prefix: CUDA0, ROCm0, Vulkan0, MTL0, CPU
    dockerfile = ""  # dockerfiles/<dockerfile>.Dockerfile from templates/<dockerfile>.Dockerfile.j2; "" none
    is_gpu = True
    arch_pattern: re.Pattern | None = None
    arch_example = ""
    arch_placeholder = ""
    label = ""  # how error messages name the vendor
    default_bandwidth_gbs = 400.0
    bandwidth_by_name: dict[str, float] = {}
    bandwidth_by_arch: dict[str, float] = {}
    uses_render_nodes = False  # reached through /dev/dri: the host's numeric video/render GIDs matter

    def arch_error(self, arch: str) -> str | None:
        """Why arch is not one of this vendor's, or None."""
        if self.arch_pattern is None:
            return f"a {self.name} device has no arch"
        if not self.arch_pattern.match(arch):
            return f"unknown {self.name} arch {arch!r} (write it like {self.arch_example})"
        return None

    def runtime_problem(self, runtime: str, os: str) -> str | None:
        """Why a device of this vendor cannot be served on a host with this runtime and OS, or None."""
        return None

    def default_reserve_gb(self, memory_gb: float) -> float:
        """What llama.cpp keeps free by default (--fit-target 1024 MiB), at most a quarter."""
        return min(1.0, memory_gb / 4) if self.is_gpu else 0.0

    # images ------------------------------------------------------------------------------
    def image(self, host: Host, devices: list[Device]) -> ImageSpec:
        """What this host builds for these devices of this vendor (RenderError when it cannot)."""
        raise NotImplementedError

    def devices_with_arch(self, host: Host, devices: list[Device]) -> list[Device]:
        """The devices, each with an arch (an image is built for exactly those targets)."""
        missing = [d.name or f"index {d.index}" for d in devices if not d.arch]
        if missing:
            raise RenderError(f"{self.label} device {missing[0]} on {host.name} has no arch",
                              f"add arch: {self.arch_placeholder} to it in cluster.yaml "
                              "(or run `hydra-compose inspect --write`)")
        return devices

    def template_context(self, first: ImageSpec, specs: list[ImageSpec]) -> dict:
        """Extra Jinja variables of this vendor's Dockerfile (defaults: the first host's build)."""
        return {}

    def native_build(self, host: Host, devices: list[Device]) -> NativeBuild:
        """What a native host (runtime: native) installs to serve these devices."""
        raise RenderError(f"{host.name}: {self.label} devices cannot be served natively on {host.os}",
                          "use runtime: docker for this host, or another vendor")

    # compose -----------------------------------------------------------------------------
    def gpu_access(self, host: Host, devices: list[Device]) -> dict:
        """Compose keys that hand these devices of the host to a container."""
        return {}

    def usage_probe(self, devices: list[Device]) -> list[str] | None:
        """A command, run inside the container that holds these devices, printing their use now
        (status: planned vs used); None where the vendor reports nothing we can read."""
        return None

    def parse_usage(self, text: str, devices: list[Device]) -> list[DeviceUsage | None]:
        """The probe's output -> one entry per device, in order (None: that device not found)."""
        return [None for _ in devices]

    def k8s_resource(self, device: Device) -> str | None:
        """The extended resource a Kubernetes device plugin offers this device as (None: no plugin, a CPU)."""
        return None

    def access_notes(self, host: Host, devices: list[Device]) -> list[str]:
        """What generate should warn about how these devices reach their container."""
        return []

    def env_lines(self, host: Host) -> list[str]:
        """Host facts this vendor's compose keys interpolate from .env."""
        return []

    def worker_args(self, devices: list[Device]) -> list[str]:
        """Extra ggml-rpc-server arguments for one server of these devices."""
        return []

    # speed -------------------------------------------------------------------------------
    # Share of the datasheet bandwidth llama.cpp's decode kernels reach (small-batch matmuls of
    # quantized weights), by arch prefix, longest first; published tg figures of common cards:
    # an RTX 4090 ~0.57, a 3090 ~0.55, a P40 ~0.5, a 7900 XTX ~0.5, an MI50 ~0.25-0.3.
    decode_efficiency_by_arch: dict[str, float] = {}
    default_decode_efficiency = 0.5

    def decode_efficiency(self, device: Device) -> float:
        arch = device.arch or ""
        for prefix in sorted(self.decode_efficiency_by_arch, key=len, reverse=True):
            if arch.startswith(prefix):
                return self.decode_efficiency_by_arch[prefix]
        return self.default_decode_efficiency

    def bandwidth_gbs(self, device: Device) -> float:
        name = name_key(device.name or "")
        for key in sorted(self.bandwidth_by_name, key=len, reverse=True):
            if name_key(key) in name:
                return float(self.bandwidth_by_name[key])
        return float(self.bandwidth_by_arch.get(device.arch or "", self.default_bandwidth_gbs))

    # inspect -----------------------------------------------------------------------------
    def detect(self, sections: dict[str, str], notes: list[str]) -> list[GpuInfo]:
        """This vendor's GPUs from a probe's output sections; problems become notes."""
        return []

    # power -------------------------------------------------------------------------------
    power: Callable[..., PowerControl] | None = None


def name_key(name: str) -> str:
    """A card name reduced for table lookups: 'NVIDIA GeForce RTX 4070' -> '4070'-ish keys match."""
    low = name.lower()
    for word in ("(tm)", "(r)", "nvidia", "geforce", "radeon", "instinct", "amd", "intel", "rtx ", "rx "):
        low = low.replace(word, " ")
    return re.sub(r"\s+", " ", low).strip()


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def number(text: str) -> float | None:
    """A finite decimal number from a tool's text ('[N/A]', 'inf', other digits: None)."""
    text = text.strip()
    if not re.fullmatch(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", text):
        return None
    value = float(text)
    return value if abs(value) < 1e15 else None


def sysfs_cards(sections: dict[str, str]) -> list[dict]:
    """The probe's /sys/class/drm lines: vendor, device id, VRAM bytes, PCI bus id, render node."""
    cards = []
    for line in (sections.get("sysfs_cards") or "").splitlines():
        f = line.split()
        if len(f) >= 3:
            render = f[4] if len(f) > 4 and re.fullmatch(r"renderD[0-9]{3}", f[4]) else None
            cards.append({"vendor": f[0], "device": f[1], "vram_bytes": int(f[2]) if f[2].isdigit() else None,
                          "bus": f[3] if len(f) > 3 else None, "render": render})
    return cards


def guessed_nodes(host: Host, devices: list[Device]) -> list[str]:
    """A warning for devices whose render node is a guess from their index."""
    guessed = [d for d in devices if not d.render_node]
    if not guessed:
        return []
    return [f"{host.name}: /dev/dri/{render_node(guessed[0])} for {guessed[0].name or guessed[0].vendor} is guessed from "
            "its index; next to another GPU (an iGPU, an NVIDIA card) that node is another card. Run "
            "`hydra-compose inspect --write` to record each card's node by its PCI bus id"]


def render_node(device: Device) -> str:
    """The card's /dev/dri node: recorded by inspect (by PCI bus id), else the index's guess."""
    return device.render_node or f"renderD{128 + (device.index or 0)}"


def gid_groups(host: Host) -> list[Interpolated]:
    """group_add entries for /dev/dri and /dev/kfd: the host's numeric video and render GIDs (from .env);
    one entry where both are the same group (compose refuses duplicates)."""
    video = Interpolated("${VIDEO_GID:?set VIDEO_GID in .env (getent group video)}")
    render = Interpolated("${RENDER_GID:?set RENDER_GID in .env (getent group render)}")
    same = host.video_gid is not None and host.video_gid == host.render_gid
    return [video] if same else [video, render]


def gid_lines(host: Host) -> list[str]:
    return [f"VIDEO_GID={host.video_gid if host.video_gid is not None else 44}",
            f"RENDER_GID={host.render_gid if host.render_gid is not None else 992}"]
