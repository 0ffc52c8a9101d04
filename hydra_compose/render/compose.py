"""Rendering: inventory + plan -> Dockerfiles (Jinja) and compose files (data dumped as YAML).

Pure text: nothing here touches the disk except reading templates.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import vendors
from ..errors import RenderError
from ..inventory.config import ClusterConfig, Host
from ..inventory.topology import Worker, loopback, master_url, master_vendor, rpc_workers
from ..planner.fallback import Fallback
from ..planner.plan import Plan
from ..planner.replicas import replica_port
from ..vendors.base import ImageSpec, Interpolated
from . import images, monitoring
from .common import HEADER, RenderedFile
from .balancer import balancer_service, replica_service
from .images import dockerfile_name, host_image
from .server_args import PRESET_PATH, Routing, master_gpus, ServedModel, router_args, server_args  # noqa: F401 - re-exported

MAX_TAG = 128


def render_dockerfiles(cfg: ClusterConfig, config_name: str, user_templates: Path | None) -> list[RenderedFile]:
    header = "# " + HEADER.format(config=config_name)
    return [RenderedFile(path, text) for path, text in images.render_dockerfiles(cfg, header, user_templates)]


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:  # every block written out: no &id001 anchors
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value.replace("$", "$$"))


def _interpolated(dumper: yaml.SafeDumper, value: Interpolated) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value))


_Dumper.add_representer(str, _str)
_Dumper.add_representer(Interpolated, _interpolated)


def _tag(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", ref)[:100]


@dataclass(frozen=True)
class BuildSource:
    context: str  # relative to the compose directory, or absolute
    dockerfiles: str  # directory of the Dockerfiles: relative to the context, or absolute
    from_context: bool
    ref_label: str


def build_source(cfg: ClusterConfig, out_dir: Path, config_dir: Path, compose_dir: Path) -> BuildSource:
    """Where images get llama.cpp from: a git ref (default) or a local tree."""
    src = cfg.cluster.llama_cpp
    local = os.environ.get("HYDRA_LLAMA_CPP_SOURCE") or src.path
    dockerfiles = out_dir / "dockerfiles"
    if not local:
        return BuildSource(os.path.relpath(dockerfiles, compose_dir), ".", False, src.git_ref)
    tree = (config_dir / local).resolve() if not os.path.isabs(local) else Path(local)
    if not (tree / "CMakeLists.txt").is_file():
        raise RenderError(f"llama.cpp source {tree} has no CMakeLists.txt",
                          "point cluster.llama_cpp.path or HYDRA_LLAMA_CPP_SOURCE at a llama.cpp checkout")
    return BuildSource(str(tree), str(dockerfiles.resolve()), True, src.ref or f"local-{tree.name}")


def build_spec(spec: ImageSpec, target: str, source: BuildSource, cfg: ClusterConfig) -> dict:
    args = {"LLAMA_CPP_REF": source.ref_label}
    if source.from_context:
        args["LLAMA_CPP_SOURCE"] = "context"
    else:
        args["LLAMA_CPP_GIT"] = cfg.cluster.llama_cpp.git_url
    args.update(spec.build_args)  # this host's toolkit release and GPU targets
    dockerfile = os.path.join(source.dockerfiles, dockerfile_name(spec.vendor)).removeprefix("./")
    return {"context": source.context, "dockerfile": dockerfile, "target": target, "args": args}


def image_name(spec: ImageSpec, target: str, source: BuildSource) -> str:
    tag = f"{_tag(source.ref_label)}-{spec.tag}-{target}"
    if len(tag) > MAX_TAG:  # many targets: keep the name readable and unique
        digest = hashlib.sha1(spec.tag.encode()).hexdigest()[:12]
        tag = f"{_tag(source.ref_label)[:80]}-{spec.vendor}-{digest}-{target}"
    return f"hydra-compose/llama-cpp:{tag}"


def _labels(role: str, host: Host) -> dict:
    return {"io.hydra-compose.role": role, "io.hydra-compose.host": host.name}


def _worker_service(w: Worker, host: Host, source: BuildSource, cfg: ClusterConfig) -> dict:
    record = w.device.record
    spec = host_image(host, w.vendor)
    command = ["-H", w.bind, "-p", str(w.port), *record.worker_args(list(w.devices))]
    if w.backend_devices:  # one server for several GPUs
        command += ["-d", ",".join(w.backend_devices)]
    command.append("-c")
    svc: dict = {"image": image_name(spec, "rpc", source), "build": build_spec(spec, "rpc", source, cfg)}
    svc.update(record.gpu_access(host, list(w.devices)))
    svc.update({
        "command": command,
        "network_mode": "host",
        "restart": "unless-stopped",
        "volumes": ["rpc-cache:/cache"],
        # A busy worker never accepts a second client and its accept queue fills up, so
        # connecting would fail under load: check that the port is listening instead.
        "healthcheck": {"test": _listening(w.port), "interval": "5s", "timeout": "3s", "retries": 3,
                        "start_period": "10s"},
        "labels": _labels("worker", host),
    })
    return svc


def _master_service(cfg: ClusterConfig, plan: Plan, host: Host, local_workers: list[Worker],
                    source: BuildSource, models_rel: str, served: ServedModel, fallbacks: bool,
                    routing: Routing | None = None, replica: int | None = None) -> dict:
    vendor = master_vendor(cfg)
    if routing:
        command = router_args(cfg, routing)
    elif replica is not None:  # behind the balancer, on the master's loopback
        command = server_args(cfg, plan, served, bind="127.0.0.1", port=replica_port(cfg, replica))
    else:
        command = server_args(cfg, plan, served)
    spec = host_image(host, vendor)
    svc: dict = {"image": image_name(spec, "server", source), "build": build_spec(spec, "server", source, cfg),
                 # the supervisor restarts llama-server when a worker restarts (it never reconnects)
                 "entrypoint": ["/bin/bash", "/hydra/supervise.sh"], "command": command}
    plans = [m.plan for m in routing.plan.models] if routing else [plan]
    gpus = master_gpus(plans)
    if gpus:
        svc.update(vendors.get(vendor).gpu_access(host, gpus))
    environment: dict = {"LLAMA_ARG_LOG_VERBOSITY": Interpolated("${LLAMA_ARG_LOG_VERBOSITY:-3}")}
    if routing:  # the router's children dial the workers; the supervisor waits for them all
        environment["HYDRA_RPC_WORKERS"] = ",".join(routing.plan.rpc_endpoints)
    if fallbacks:
        environment.update({"HYDRA_FAILOVER_S": str(cfg.master.failover_s),
                            "HYDRA_FAILBACK_S": str(cfg.master.failback_s)})
    if cfg.master.api_key:
        # the cluster's own key, then the users' (`hydra-compose keys`): llama-server takes a comma-separated list
        environment["LLAMA_API_KEY"] = Interpolated("${LLAMA_API_KEY:?set LLAMA_API_KEY in .env}${HYDRA_USER_KEYS:-}")
    health = f"{master_url(cfg)}/health" if replica is None else f"http://127.0.0.1:{replica_port(cfg, replica)}/health"
    svc.update({
        "environment": environment,
        "network_mode": "host",
        "restart": "unless-stopped",
        "volumes": [f"{models_rel}:/models:ro", "./supervise.sh:/hydra/supervise.sh:ro",
                    *(["./fallback:/hydra/fallback:ro"] if fallbacks else []),
                    *([f"./models.ini:{PRESET_PATH}:ro"] if routing else [])],
        # the URL is an argument of the script, never part of it
        "healthcheck": {"test": ["CMD", "bash", "-c", 'curl -fsS -- "$1" && ! test -e /tmp/hydra-stalled',
                                 "healthcheck", health],
                        "interval": "5s", "timeout": "3s", "retries": 3, "start_period": "300s"},
        "labels": {**_labels("master", host),
                   **({} if replica is None else {"io.hydra-compose.replica": str(replica + 1)})},
    })
    needs = [w.service for w in local_workers] + (["rpc-tls"] if tls_sections(cfg, host) else [])
    if needs:
        svc["depends_on"] = {name: {"condition": "service_healthy", "restart": True} for name in needs}
    return svc


TLS_DIR = "/hydra/tls"


def listening_check(port: int) -> list[str]:
    """A command that succeeds while something listens on port (any address). A busy worker never
    accepts a second client: check that the port listens, not that it answers."""
    return ["grep", "-qi", f":{port:04X} 00000000:0000 0A", "/proc/net/tcp"]


def _listening(port: int) -> list[str]:
    return ["CMD", *listening_check(port)]


def tls_sections(cfg: ClusterConfig, host: Host) -> list[Worker]:
    """The TLS links a host terminates: its own workers (server side), or on the master, every
    tunnelled worker (client side)."""
    tunnelled = [w for w in rpc_workers(cfg) if w.tls_address]
    if host.name == cfg.master.host:
        return tunnelled
    return [w for w in tunnelled if w.host == host.name]


def render_tls_conf(cfg: ClusterConfig, host: Host, links: list[Worker] | None = None) -> str:
    """stunnel's configuration for this host (paths only: the keys are mounted files). TLS 1.3 only,
    both sides present a certificate of the cluster's CA, the master also checks the worker's name.
    links: the host's tls_sections with other addresses (a pod network's), by default as planned."""
    master = host.name == cfg.master.host
    lines = [f"; {HEADER.format(config='cluster.yaml')}",
             "; mutual TLS on the RPC links: " + ("the master's tunnels to its workers" if master else
                                                  "this host's workers, reachable only with the cluster's certificate"),
             "foreground = yes", "pid =", "debug = warning",
             f"cert = {TLS_DIR}/host.crt", f"key = {TLS_DIR}/host.key", f"CAfile = {TLS_DIR}/ca.crt",
             "verifyChain = yes", "requireCert = yes", "sslVersionMin = TLSv1.3",
             # RPC is a stream of small requests: Nagle's delay on either side would cost every round trip
             "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1"]
    for w in tls_sections(cfg, host) if links is None else links:
        lines += ["", f"[{w.host}-{w.port}]"]
        if master:
            lines += ["client = yes", f"accept = {w.address}:{w.port}", f"connect = {w.tls_address}:{w.port}",
                      f"checkHost = {w.host}"]
        else:
            lines += [f"accept = {w.tls_bind}:{w.port}", f"connect = {w.bind}:{w.local_port or w.port}"]
    return "\n".join(lines) + "\n"


def _tls_service(cfg: ClusterConfig, host: Host, image_of: dict) -> dict:
    first = tls_sections(cfg, host)[0]
    return {**image_of, "entrypoint": ["stunnel", f"{TLS_DIR}/stunnel.conf"], "network_mode": "host",
            "restart": "unless-stopped", "volumes": [f"./tls:{TLS_DIR}:ro"],
            "healthcheck": {"test": _listening(first.port), "interval": "5s", "timeout": "3s", "retries": 3,
                            "start_period": "10s"},
            "labels": _labels("tls", host)}


def render_notes(cfg: ClusterConfig) -> list[str]:
    """Warnings about the images and the device access generate writes (e.g. a driver nobody recorded)."""
    notes = [n for spec in images.all_images(cfg).values() for n in spec.notes]
    served = [d for w in rpc_workers(cfg) for d in w.devices if cfg.host(w.host).runtime == "docker"]
    served += [d for d in cfg.master_host.devices if d.is_gpu and d.vendor == master_vendor(cfg)]
    for host in cfg.hosts:
        for record in vendors.ALL:
            mine = [d for d in host.devices if d.vendor == record.name and any(d is s for s in served)]
            if mine:
                notes += record.access_notes(host, mine)
    if cfg.cluster.rpc_tls is not False:  # unset or on: the links are meant to be locked
        serving = {w.host for w in rpc_workers(cfg)}
        for host in cfg.hosts:
            if host.runtime == "native" and not loopback(host.address) and host.name in serving:
                notes.append(f"{host.name}: a native worker keeps plain RPC (rpc_tls covers Docker hosts): allow its "
                             f"ports only from the master's address {cfg.master_host.address}")
    return notes


def render_compose(cfg: ClusterConfig, plan: Plan, served: ServedModel, host: Host, config_name: str,
                   source: BuildSource, models_rel: str, fallbacks: bool = False, routing: Routing | None = None,
                   replicas: tuple[Plan, ...] = ()) -> str:
    """replicas: two or more plans on disjoint workers, one llama-server each behind the balancer."""
    workers = [w for w in rpc_workers(cfg) if w.host == host.name]
    services = {w.service: _worker_service(w, host, source, cfg) for w in workers}
    if host.name == cfg.master.host and len(replicas) > 1:
        for i, p in enumerate(replicas):
            mine = [w for w in workers if w.endpoint in p.rpc_endpoints]
            services[replica_service(i)] = _master_service(cfg, p, host, mine, source, models_rel, served, False,
                                                           replica=i)
        spec = host_image(host, master_vendor(cfg))
        services["balancer"] = balancer_service(cfg, host, image_name(spec, "balancer", source),
                                                build_spec(spec, "balancer", source, cfg))
    elif host.name == cfg.master.host:
        services["llama-server"] = _master_service(cfg, plan, host, workers, source, models_rel, served, fallbacks,
                                                   routing)
    if tls_sections(cfg, host):  # the same image as the host's first service: stunnel is in every image
        first = next(iter(services.values()))
        services["rpc-tls"] = _tls_service(cfg, host, {"image": first["image"], "build": copy.deepcopy(first["build"])})
    services.update(monitoring.exporter_services(cfg, host))
    if host.name == cfg.master.host:
        services.update(monitoring.master_services(cfg))
    doc: dict = {"name": f"{cfg.cluster.name}-{host.name.lower().replace('.', '-')}", "services": services}
    volumes, secrets = monitoring.compose_extras(cfg, host)
    if workers or volumes:
        doc["volumes"] = {**({"rpc-cache": {}} if workers else {}), **volumes}
    if secrets:
        doc["secrets"] = secrets
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return f"# {HEADER.format(config=config_name)}\n{body}"


def render_fallbacks(cfg: ClusterConfig, fallbacks: list[Fallback], served: ServedModel, bind: str | None = None,
                     endpoints: dict[str, str] | None = None) -> list[RenderedFile]:
    """The supervisor's data, one file per lost host (never shell: one llama-server argument per line).
    NN-HOST[-WORKER].args: a line describing the fallback, then its arguments, best predicted speed
    first; HOST[-WORKER].nofit: why nothing fits without it."""
    fitting = sorted((f for f in fallbacks if f.plan is not None), key=lambda f: -f.plan.predicted_tg_tokens_per_s)
    files = []
    for i, fb in enumerate(fitting, 1):
        lines = [f"# {fb.describe()}", *server_args(cfg, fb.plan, served, bind, endpoints)]
        if any("\n" in line for line in lines):
            raise RenderError(f"a llama-server argument of the fallback without {fb.label} spans lines",
                              "remove line breaks from cluster.yaml and model names")
        files.append(RenderedFile(f"fallback/{i:02d}-{fb.file_stem}.args", "\n".join(lines) + "\n"))
    for fb in fallbacks:
        if fb.plan is None:
            files.append(RenderedFile(f"fallback/{fb.file_stem}.nofit", f"{fb.describe()}\n"))
    return files


def render_supervisor() -> str:
    import importlib.resources

    text = importlib.resources.files("hydra_compose").joinpath("data/supervise.sh").read_text()
    shebang, rest = text.split("\n", 1)
    return f"{shebang}\n# {HEADER.format(config='cluster.yaml')}\n{rest}"


USER_KEY_PREFIX = "HYDRA_KEY_"


def user_key_lines(keys: dict[str, str]) -> list[str]:
    """.env lines of the users' keys: one per name, and the list llama-server appends to its own."""
    if not keys:
        return []
    return ["# users' API keys (hydra-compose keys add|list|revoke)",
            *(f"{USER_KEY_PREFIX}{name.upper()}={key}" for name, key in sorted(keys.items())),
            "HYDRA_USER_KEYS=" + "".join(f",{key}" for _, key in sorted(keys.items()))]


def render_env(cfg: ClusterConfig, host: Host, api_key: str | None, grafana_password: str | None = None,
               user_keys: dict[str, str] | None = None) -> str:
    lines = [f"# {HEADER.format(config='cluster.yaml')}",
             "# Secrets and host facts for this host's compose file (mode 0600)."]
    if monitoring.exporter_services(cfg, host) or (cfg.monitoring and host.name == cfg.master.host):
        lines += ["# `docker compose up` starts the monitoring profile too", f"COMPOSE_PROFILES={monitoring.PROFILE}"]
    if grafana_password:
        lines.append(f"GRAFANA_ADMIN_PASSWORD={grafana_password}")
    for record in vendors.ALL:
        if any(d.vendor == record.name for d in host.devices):
            lines += record.env_lines(host)
    if host.name == cfg.master.host and cfg.master.api_key and api_key:
        lines.append(f"LLAMA_API_KEY={api_key}")
        lines += user_key_lines(user_keys or {})
    return "\n".join(lines) + "\n"
