"""One record per kind of device (see base.Vendor). Order matters where output lists vendors."""

from __future__ import annotations

from .amd import VENDOR as AMD
from .base import Vendor
from .cpu import VENDOR as CPU
from .metal import VENDOR as METAL
from .nvidia import VENDOR as NVIDIA
from .vulkan import VENDOR as VULKAN

ALL: tuple[Vendor, ...] = (CPU, NVIDIA, AMD, VULKAN, METAL)
BY_NAME = {v.name: v for v in ALL}
NAMES = tuple(BY_NAME)


def get(name: str) -> Vendor:
    return BY_NAME[name]
