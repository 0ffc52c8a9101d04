"""generate: plan, then write the Dockerfiles, each Docker host's compose file and .env, and each
native host's scripts and services — all or nothing."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..planner.fallback import Fallback, fallback_plans
from ..planner.plan import Plan, PlanOptions, make_plan
from ..planner.replicas import ReplicaPlan, replicas_of
from ..planner.router import RouterPlan, plan_router
from ..inventory.topology import rpc_tls, tls_hosts
from ..render.compose import (HEADER, RenderedFile, ServedModel, build_source, render_compose, render_dockerfiles,
                              render_env, render_fallbacks, render_notes, render_supervisor, render_tls_conf,
                              tls_sections)
from ..runtime.pki import cluster_certificates
from ..errors import ConfigError
from ..render import kubernetes
from ..render.balancer import render_haproxy
from ..render.monitoring import render_monitoring
from ..render.server_args import Routing, render_preset
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
    fallbacks: tuple[Fallback, ...] = ()  # one per worker host the master can lose
    target: str = "compose"
    router: RouterPlan | None = None  # serve: several models behind the router (plan is its first model's)
    replicas: ReplicaPlan | None = None  # replicas: in cluster.yaml (plan is the first replica's)


def existing_key(env_file: Path, name: str = "LLAMA_API_KEY") -> str | None:
    """A secret a previous generate wrote into a .env (kept, so regenerating changes nothing)."""
    if env_file.exists():
        m = re.search(rf"^{name}=(\S+)$", env_file.read_text(), re.M)
        if m:
            return m[1]
    return None


def _native_files(project: Project, host) -> list[RenderedFile]:  # noqa: ANN001 - a native Host
    header = HEADER.format(config=project.config_path.name)
    return [RenderedFile(p, text, mode)
            for p, text, mode in render_native(project.config, host, header, project.root / "templates")]


def existing_user_keys(env_file: Path) -> dict[str, str]:
    """name -> key of the users' keys in a .env (kept by generate; keys revoke removes them)."""
    if not env_file.exists():
        return {}
    return {m[1].lower(): m[2] for m in re.finditer(r"^HYDRA_KEY_([A-Z][A-Z0-9_]{0,31})=(\S+)$", env_file.read_text(), re.M)}


def render_all(project: Project, out_dir: Path, served: ServedModel, plan: Plan,
               fallbacks: list[Fallback] = (), rotate_certs: bool = False,
               routing: Routing | None = None, replicas: tuple[Plan, ...] = ()) -> list[RenderedFile]:
    cfg = project.config
    config_name = os.path.relpath(project.config_path.resolve(), out_dir.resolve())
    files = render_dockerfiles(cfg, project.config_path.name, project.root / "templates")
    if cfg.cluster.target == "kubernetes":
        return files + render_pods(project, out_dir, served, plan, fallbacks, rotate_certs, routing)
    for host in cfg.hosts:
        if host.runtime == "native":
            files += _native_files(project, host)
            continue
        compose_dir = out_dir / "compose" / host.name
        source = build_source(cfg, out_dir.resolve(), project.root, compose_dir.resolve())
        models_rel = os.path.relpath(project.models_dir, compose_dir.resolve())
        files.append(RenderedFile(f"compose/{host.name}/docker-compose.yml",
                                  render_compose(cfg, plan, served, host, config_name, source, models_rel,
                                                 bool(fallbacks), routing, replicas)))
        if host.name == cfg.master.host:
            files.append(RenderedFile(f"compose/{host.name}/supervise.sh", render_supervisor(), mode=0o755))
            if routing:
                files.append(RenderedFile(f"compose/{host.name}/models.ini", render_preset(routing)))
            if len(replicas) > 1:
                files.append(RenderedFile(f"compose/{host.name}/haproxy.cfg", render_haproxy(cfg, len(replicas))))
            files += [RenderedFile(f"compose/{host.name}/{f.path}", f.text, f.mode)
                      for f in render_fallbacks(cfg, list(fallbacks), served)]
        key = password = None
        if host.name == cfg.master.host and cfg.master.api_key:
            key = existing_key(compose_dir / ".env") or secrets.token_urlsafe(32)
        if host.name == cfg.master.host and cfg.monitoring:
            password = existing_key(compose_dir / ".env", "GRAFANA_ADMIN_PASSWORD") or secrets.token_urlsafe(18)
        users = None
        if key:
            users = existing_user_keys(compose_dir / ".env")
            users.update({n: secrets.token_urlsafe(32) for n in cfg.master.api_keys if n not in users})
        files.append(RenderedFile(f"compose/{host.name}/.env", render_env(cfg, host, key, password, users),
                                  mode=0o600))
        if tls_sections(cfg, host):
            files.append(RenderedFile(f"compose/{host.name}/tls/stunnel.conf", render_tls_conf(cfg, host)))
    files += render_monitoring(cfg, plan, max(1, len(replicas)))
    tunnelled = tls_hosts(cfg) if rpc_tls(cfg) else []
    if tunnelled:
        files += cluster_certificates(out_dir, cfg.cluster.name, [cfg.master_host, *tunnelled], rotate_certs)
    return files


def render_pods(project: Project, out_dir: Path, served: ServedModel, plan: Plan, fallbacks: list[Fallback],
                rotate_certs: bool, routing: Routing | None = None) -> list[RenderedFile]:
    """k8s/ (and native hosts' services, which the master pod dials at their addresses), the API key
    file and the TLS keys kustomize turns into Secrets."""
    cfg = project.config
    k8s_dir = out_dir / kubernetes.OUT
    config_name = os.path.relpath(project.config_path.resolve(), k8s_dir.resolve())
    source = build_source(cfg, out_dir.resolve(), project.root, k8s_dir.resolve())
    files = kubernetes.render_kubernetes(cfg, plan, served, list(fallbacks), source, config_name, render_supervisor(),
                                         routing)
    for host in cfg.hosts:
        if host.runtime == "native":
            files += _native_files(project, host)
    if cfg.master.api_key:
        key_file = k8s_dir / kubernetes.API_KEY_FILE
        key = existing_key(key_file) or secrets.token_urlsafe(32)
        files.append(RenderedFile(f"{kubernetes.OUT}/{kubernetes.API_KEY_FILE}", f"LLAMA_API_KEY={key}\n", 0o600))
    tls = kubernetes.tls_hosts_for_pods(cfg)
    if tls:
        files += cluster_certificates(out_dir, cfg.cluster.name, tls, rotate_certs, f"{kubernetes.OUT}/tls/{{host}}")
    return files


def run(project: Project, model: str | None, out_dir: Path | None, force: bool, rotate_certs: bool = False,
        target: str | None = None, **overrides: object) -> GenerateResult:
    if target and target != project.config.cluster.target:  # --target: this run only
        cfg = project.config
        project = Project(project.config_path, cfg.model_copy(update={
            "cluster": cfg.cluster.model_copy(update={"target": target})}))
    if model is None and project.config.served_models:
        return _run_router(project, out_dir, force, rotate_certs, **overrides)
    name, entry = project.model_entry(model)
    facts = project.model_facts(entry)
    opts = PlanOptions.from_entry(entry, **overrides)
    projector, draft = project.projector_facts(entry), project.draft_facts(entry)
    replicas = replicas_of(project.config, entry, facts, opts, projector, draft)
    plan = replicas.plans[0] if replicas else make_plan(project.config, facts, opts, projector, draft)
    several = replicas is not None and replicas.chosen.replicas > 1
    if several and project.config.cluster.target == "kubernetes":
        raise ConfigError("replicas are written for the compose target only",
                          "set replicas: 1 for Kubernetes (one llama-server per cluster for now), or target: compose")
    # replicas need no fallback plans: the balancer sends requests to the replicas still answering
    fallbacks = [] if several else fallback_plans(project.config, plan, opts, projector, draft)
    out = out_dir or project.root
    files = render_all(project, out, ServedModel.of(name, entry), plan, fallbacks,
                       rotate_certs, replicas=replicas.plans if several else ())
    changed = write_files(out, files, force)
    notes = kubernetes.render_notes(project.config) if project.config.cluster.target == "kubernetes" else \
        render_notes(project.config)
    return GenerateResult(out, name, plan, tuple(f.path for f in files), tuple(changed),
                          (*plan.warnings, *notes), tuple(fallbacks), project.config.cluster.target,
                          replicas=replicas)


def _run_router(project: Project, out_dir: Path | None, force: bool, rotate_certs: bool,
                **overrides: object) -> GenerateResult:
    cfg = project.config
    names = cfg.served_models
    router = plan_router(cfg, project.model_requests(names, **overrides))
    routing = Routing(router, tuple(ServedModel.of(n, cfg.models[n]) for n in names))
    first = router.models[0]
    out = out_dir or project.root
    # no fallback plans: the supervisor restarts the router when a worker comes back, not on a smaller plan
    files = render_all(project, out, routing.served[0], first.plan, [], rotate_certs, routing)
    changed = write_files(out, files, force)
    warnings = [f"{m.name}: {w}" for m in router.models for w in m.plan.warnings]
    notes = kubernetes.render_notes(cfg) if cfg.cluster.target == "kubernetes" else render_notes(cfg)
    return GenerateResult(out, first.name, first.plan, tuple(f.path for f in files), tuple(changed),
                          (*warnings, *notes), (), cfg.cluster.target, router)
