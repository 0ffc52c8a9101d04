"""What every command starts from: the config file, its directory and models/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ClusterConfig, ModelEntry, load_config
from ..errors import ConfigError, ModelError
from ..gguf_facts import ModelFacts, read_model


@dataclass(frozen=True)
class Project:
    config_path: Path
    config: ClusterConfig

    @property
    def root(self) -> Path:
        return self.config_path.resolve().parent

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model_entry(self, name: str | None) -> tuple[str, ModelEntry]:
        models = self.config.models
        if name is None:
            if not models:
                raise ConfigError(f"{self.config_path} lists no models",
                                  "add one under models: (see `hydra-compose models`), or pass -m FILE.gguf")
            defaults = [n for n, m in models.items() if m.default]
            name = defaults[0] if defaults else next(iter(models))
            return name, models[name]
        if name in models:
            return name, models[name]
        by_file = [n for n, m in models.items() if m.file == name]
        if by_file:
            return by_file[0], models[by_file[0]]
        if name.endswith(".gguf"):
            return Path(name).stem, ModelEntry(file=name)
        known = ", ".join(models) or "none"
        raise ConfigError(f"model {name!r} is not in cluster.yaml (known: {known})",
                          "pass one of those names, or a .gguf file name from models/")

    def model_facts(self, entry: ModelEntry) -> ModelFacts:
        path = Path(entry.file)
        path = path if path.is_absolute() else self.models_dir / path
        if not path.exists():
            raise ModelError(f"model file {path} not found", f"put the GGUF into {self.models_dir}/")
        return read_model(path)


def open_project(config_path: Path) -> Project:
    return Project(config_path, load_config(config_path))
