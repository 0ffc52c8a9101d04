"""generate: plan, then write the Dockerfiles, each Docker host's compose file and .env, and each
native host's scripts and services — all or nothing."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..planner.plan import Plan, PlanOptions, make_plan
from ..render.compose import (HEADER, RenderedFile, ServedModel, build_source, render_compose, render_dockerfiles,
                              render_env, render_notes, render_supervisor)
from ..render.native import render_native
from ..runtime.writer import write_files
from .context import Project


@dataclass(frozen=True)
class GenerateResult:
    out_dir: Path
    model_name: str
    plan: Plan
    files: tuple[str, ...]
    changed: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # the plan's, then the images' and the device access's


def existing_key(env_file: Path) -> str | None:
    """The API key a previous generate wrote into a .env (kept, so regenerating changes nothing)."""
    if env_file.exists():
        m = re.search(r"^LLAMA_API_KEY=(\S+)$", env_file.read_text(), re.M)
        if m:
            return m[1]
    return None


def render_all(project: Project, out_dir: Path, served: ServedModel, plan: Plan) -> list[RenderedFile]:
    cfg = project.config
    config_name = os.path.relpath(project.config_path.resolve(), out_dir.resolve())
    files = render_dockerfiles(cfg, project.config_path.name, project.root / "templates")
    templates = project.root / "templates"
    for host in cfg.hosts:
        if host.runtime == "native":
            header = HEADER.format(config=project.config_path.name)
            files += [RenderedFile(p, text, mode) for p, text, mode in render_native(cfg, host, header, templates)]
            continue
        compose_dir = out_dir / "compose" / host.name
        source = build_source(cfg, out_dir.resolve(), project.root, compose_dir.resolve())
        models_rel = os.path.relpath(project.models_dir, compose_dir.resolve())
        files.append(RenderedFile(f"compose/{host.name}/docker-compose.yml",
                                  render_compose(cfg, plan, served, host, config_name, source, models_rel)))
        if host.name == cfg.master.host:
            files.append(RenderedFile(f"compose/{host.name}/supervise.sh", render_supervisor(), mode=0o755))
        key = None
        if host.name == cfg.master.host and cfg.master.api_key:
            key = existing_key(compose_dir / ".env") or secrets.token_urlsafe(32)
        files.append(RenderedFile(f"compose/{host.name}/.env", render_env(cfg, host, key), mode=0o600))
    return files


def run(project: Project, model: str | None, out_dir: Path | None, force: bool,
        **overrides: object) -> GenerateResult:
    name, entry = project.model_entry(model)
    facts = project.model_facts(entry)
    plan = make_plan(project.config, facts, PlanOptions.from_entry(entry, **overrides), project.projector_facts(entry))
    out = out_dir or project.root
    files = render_all(project, out, ServedModel(name, entry.file, entry.mmproj), plan)
    changed = write_files(out, files, force)
    return GenerateResult(out, name, plan, tuple(f.path for f in files), tuple(changed),
                          (*plan.warnings, *render_notes(project.config)))
