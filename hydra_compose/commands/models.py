from __future__ import annotations

from pathlib import Path

from ..modelfacts.gguf_facts import ModelFacts, list_models


def run(models_dir: Path) -> list[ModelFacts]:
    return list_models(models_dir)
