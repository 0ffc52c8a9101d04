"""What every command starts from: the config file, its directory and models/."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..inventory import safe_values
from ..inventory.config import ClusterConfig, ModelEntry, load_config
from ..errors import ConfigError, ModelError
from ..modelfacts.gguf_facts import ModelFacts, ProjectorFacts, read_model, read_projector


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
            try:
                safe_values.file_in_models(name)
            except ValueError as exc:
                raise ConfigError(f"-m {name}: {exc}", "name a .gguf file below models/") from None
            entry = ModelEntry(file=name)
            return _entry_name(Path(name).stem), entry
        known = ", ".join(models) or "none"
        raise ConfigError(f"model {name!r} is not in cluster.yaml (known: {known})",
                          "pass one of those names, or a .gguf file name from models/")

    def model_file(self, relative: str) -> Path:
        """A file named in cluster.yaml, which must stay inside models/ (links included)."""
        path = self.models_dir / relative
        try:
            os.stat(path)
        except FileNotFoundError:
            raise ModelError(f"model file {path} not found", f"put the GGUF into {self.models_dir}/") from None
        except OSError as exc:  # unsearchable models/, a link loop
            raise ModelError(f"model file {path} cannot be reached: {exc.strerror}",
                             "check models/ and its permissions; replace links that lead nowhere") from None
        if self.models_dir.resolve() not in path.resolve().parents:
            # models/ is mounted read-only into the master: a link out of it would be broken there
            raise ModelError(f"{relative} is a link to a file outside {self.models_dir}",
                             "copy or hard-link the file into models/")
        return path

    def model_facts(self, entry: ModelEntry) -> ModelFacts:
        """The model as planned: its header's facts, with its LoRA adapters in the layers they patch."""
        from ..modelfacts.lora import read_lora, with_adapters

        facts = read_model(self.model_file(entry.file), root=self.models_dir)
        return with_adapters(facts, [read_lora(self.model_file(a.file), facts) for a in entry.lora])

    def draft_facts(self, entry: ModelEntry) -> ModelFacts | None:
        return read_model(self.model_file(entry.draft), root=self.models_dir) if entry.draft else None

    def projector_facts(self, entry: ModelEntry) -> ProjectorFacts | None:
        return read_projector(self.model_file(entry.mmproj)) if entry.mmproj else None

    def model_requests(self, names: list[str], **overrides: object) -> list:
        """The models of serve: as the router planner takes them (plan's options apply to each)."""
        from ..planner.plan import PlanOptions
        from ..planner.router import ModelRequest

        return [ModelRequest(n, self.model_facts(e), PlanOptions.from_entry(e, **overrides), self.projector_facts(e),
                             self.draft_facts(e)) for n, e in ((n, self.config.models[n]) for n in names)]


def _entry_name(stem: str) -> str:
    """A model name (the --alias) from a file name: safe characters only."""
    import re

    return re.sub(r"[^A-Za-z0-9._:-]", "-", stem)[:64].lstrip("-._:") or "model"


def open_project(config_path: Path) -> Project:
    return Project(config_path, load_config(config_path))
