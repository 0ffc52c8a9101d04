"""Monitoring as an opt-in (cluster.yaml `monitoring: true`): a `monitoring` compose profile on
every Docker host — node exporter everywhere, NVIDIA's DCGM exporter and AMD's device metrics
exporter where those cards serve — and on the master Prometheus (scraping llama-server's
/metrics with the cluster's key) and Grafana with a dashboard we ship, provisioned.

The dashboard knows the plan: each slot's planned context is drawn beside the largest prompt
llama-server has held, and each device's planned MiB beside what its exporter reports.

Pure text; the .env lines (COMPOSE_PROFILES, Grafana's admin password) come from generate.
"""

from __future__ import annotations

import json

import yaml

from ..inventory.config import ClusterConfig, Host
from ..inventory.topology import master_bind, master_url, rpc_workers
from ..planner.plan import Plan
from ..planner.replicas import replica_port
from ..vendors.base import Interpolated
from .common import HEADER, RenderedFile

PROFILE = "monitoring"
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
NODE_EXPORTER_PORT = 9100
DCGM_PORT = 9400
AMD_EXPORTER_PORT = 5000
KEY_SECRET = "llama_api_key"
DATASOURCE_UID = "hydra-prometheus"
# Images as their projects publish them (pinned: a dashboard's metric names follow a release).
IMAGES = {"prometheus": "prom/prometheus:v3.5.0", "grafana": "grafana/grafana:12.1.1",
          "node-exporter": "prom/node-exporter:v1.9.1",
          "dcgm-exporter": "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04",
          "amd-exporter": "rocm/device-metrics-exporter:v1.3.0"}
MiB = 1024**2


def _served_vendors(cfg: ClusterConfig, host: Host) -> set[str]:
    vendors = {w.vendor for w in rpc_workers(cfg) if w.host == host.name}
    if host.name == cfg.master.host:
        vendors |= {d.vendor for d in host.devices if d.is_gpu}
    return vendors


def monitored_hosts(cfg: ClusterConfig) -> list[Host]:
    """Docker hosts that run something of the cluster (workers or the master)."""
    serving = {w.host for w in rpc_workers(cfg)} | {cfg.master.host}
    return [h for h in cfg.hosts if h.runtime == "docker" and h.name in serving]


def _listen(host: Host) -> str:
    return host.bind or host.address


def exporter_services(cfg: ClusterConfig, host: Host) -> dict:
    """The profile's exporters on one host (host network, like the workers)."""
    if not cfg.monitoring or host not in monitored_hosts(cfg):
        return {}
    labels = {"io.hydra-compose.role": "monitoring", "io.hydra-compose.host": host.name}
    common = {"profiles": [PROFILE], "network_mode": "host", "restart": "unless-stopped", "labels": labels}
    services = {"node-exporter": {
        "image": IMAGES["node-exporter"], **common, "pid": "host",
        "command": [f"--web.listen-address={_listen(host)}:{NODE_EXPORTER_PORT}", "--path.rootfs=/host"],
        "volumes": ["/:/host:ro,rslave"]}}
    vendors = _served_vendors(cfg, host)
    if "nvidia" in vendors:
        services["dcgm-exporter"] = {
            "image": IMAGES["dcgm-exporter"], **common, "cap_add": ["SYS_ADMIN"],
            "environment": {"DCGM_EXPORTER_LISTEN": f"{_listen(host)}:{DCGM_PORT}"},
            "deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all",
                                                                   "capabilities": ["gpu"]}]}}}}
    if "amd" in vendors:  # it listens on every address of the host (port 5000): firewall it to the master
        services["amd-exporter"] = {"image": IMAGES["amd-exporter"], **common,
                                    "devices": ["/dev/kfd", "/dev/dri"]}
    return services


def master_services(cfg: ClusterConfig) -> dict:
    if not cfg.monitoring:
        return {}
    host = cfg.master_host
    bind = master_bind(cfg)
    labels = {"io.hydra-compose.role": "monitoring", "io.hydra-compose.host": host.name}
    common = {"profiles": [PROFILE], "network_mode": "host", "restart": "unless-stopped", "labels": labels}
    prometheus: dict = {
        "image": IMAGES["prometheus"], **common,
        "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                    f"--web.listen-address={bind}:{PROMETHEUS_PORT}", "--storage.tsdb.retention.time=30d"],
        "volumes": ["./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro", "prometheus-data:/prometheus"]}
    if cfg.master.api_key:
        prometheus["secrets"] = [KEY_SECRET]  # from LLAMA_API_KEY in .env: the key is in no other file
    grafana = {
        "image": IMAGES["grafana"], **common,
        "environment": {"GF_SERVER_HTTP_ADDR": bind, "GF_SERVER_HTTP_PORT": str(GRAFANA_PORT),
                        "GF_SECURITY_ADMIN_PASSWORD": Interpolated(
                            "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD in .env}"),
                        "GF_USERS_ALLOW_SIGN_UP": "false"},
        "volumes": ["./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro",
                    "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards:ro", "grafana-data:/var/lib/grafana"],
        "depends_on": ["prometheus"]}
    return {"prometheus": prometheus, "grafana": grafana}


def compose_extras(cfg: ClusterConfig, host: Host) -> tuple[dict, dict]:
    """Top-level volumes and secrets the profile's services need on this host."""
    if not cfg.monitoring or host.name != cfg.master.host:
        return {}, {}
    secrets = {KEY_SECRET: {"environment": "LLAMA_API_KEY"}} if cfg.master.api_key else {}
    return {"prometheus-data": {}, "grafana-data": {}}, secrets


def _llama_targets(cfg: ClusterConfig, replicas: int) -> list[dict]:
    """llama-server's /metrics: the master; behind the router one target per model (its /metrics
    wants ?model=, set from the __param_model label); with replicas each replica on the master's
    loopback (Prometheus runs in the master host's network), not the balancer's pick."""
    host = cfg.master_host.name
    address = master_url(cfg).split("://", 1)[1]
    if cfg.served_models:
        return [{"targets": [address], "labels": {"host": host, "model": n, "__param_model": n}}
                for n in cfg.served_models]
    if replicas > 1:
        return [{"targets": [f"127.0.0.1:{replica_port(cfg, i)}"], "labels": {"host": host, "replica": str(i + 1)}}
                for i in range(replicas)]
    return [{"targets": [address], "labels": {"host": host}}]


def prometheus_config(cfg: ClusterConfig, replicas: int = 1) -> str:
    llama: dict = {"job_name": "llama-server", "metrics_path": "/metrics",
                   "static_configs": _llama_targets(cfg, replicas)}
    if cfg.master.api_key:
        llama["authorization"] = {"type": "Bearer", "credentials_file": f"/run/secrets/{KEY_SECRET}"}
    jobs = [llama]
    hosts = monitored_hosts(cfg)
    for job, port, vendor in (("node", NODE_EXPORTER_PORT, None), ("dcgm", DCGM_PORT, "nvidia"),
                              ("amd-gpu", AMD_EXPORTER_PORT, "amd")):
        targets = [{"targets": [f"{h.address}:{port}"], "labels": {"host": h.name}} for h in hosts
                   if vendor is None or vendor in _served_vendors(cfg, h)]
        if targets:
            jobs.append({"job_name": job, "static_configs": targets})
    doc = {"global": {"scrape_interval": "5s", "evaluation_interval": "15s"}, "scrape_configs": jobs}
    return f"# {HEADER.format(config='cluster.yaml')}\n" + yaml.safe_dump(doc, sort_keys=False, width=120)


def _panel(pid: int, title: str, x: int, y: int, targets: list[tuple[str, str]], unit: str, w: int = 12) -> dict:
    return {"id": pid, "type": "timeseries", "title": title, "gridPos": {"x": x, "y": y, "w": w, "h": 8},
            "datasource": {"type": "prometheus", "uid": DATASOURCE_UID},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": DATASOURCE_UID}}
                        for i, (expr, legend) in enumerate(targets)]}


def dashboard_queries(cfg: ClusterConfig, plan: Plan) -> list[dict]:
    """The dashboard's panels: llama-server's own metrics first, then the devices against the plan."""
    slot_ctx = plan.ctx // max(1, plan.options.parallel)
    # the plan's GPUs (device index on their host), drawn as constant lines beside the exporter's figures
    planned = [(f"{d.slot.host} {d.slot.id}", d.total_bytes) for d in plan.devices
               if d.total_bytes and d.slot.vendor == "nvidia"]
    panels = [
        _panel(1, "Decode tok/s", 0, 0, [("llamacpp:predicted_tokens_seconds", "decode (last requests)"),
                                          ("rate(llamacpp:tokens_predicted_total[1m])", "tokens generated /s")],
               "none"),
        _panel(2, "Prompt tok/s", 12, 0, [("llamacpp:prompt_tokens_seconds", "prompt processing"),
                                           ("rate(llamacpp:prompt_tokens_total[1m])", "prompt tokens /s")], "none"),
        _panel(3, "Queue", 0, 8, [("llamacpp:requests_processing", "processing"),
                                   ("llamacpp:requests_deferred", "deferred (waiting for a slot)")], "none"),
        # b11434 exports no latency histogram: the mean time per generated token over the last minute;
        # `hydra-compose bench` measures p50/p90/p99 from the client
        _panel(4, "Time per output token (mean, 1 min)", 12, 8,
               [("1000 * rate(llamacpp:tokens_predicted_seconds_total[1m]) / "
                 "clamp_min(rate(llamacpp:tokens_predicted_total[1m]), 1e-9)", "ms per token")], "ms"),
        _panel(5, f"KV use: largest context held vs planned {slot_ctx} per slot", 0, 16,
               [("llamacpp:n_tokens_max", "largest context held"), (f"vector({slot_ctx})", "planned per slot")],
               "none"),
        _panel(6, "NVIDIA memory used (MiB) vs plan", 12, 16,
               [("DCGM_FI_DEV_FB_USED", "{{host}} GPU {{gpu}}")] +
               [(f"vector({round(b / MiB)})", f"planned: {name}") for name, b in planned], "decmbytes"),
        _panel(7, "GPU utilisation (%)", 0, 24, [("DCGM_FI_DEV_GPU_UTIL", "{{host}} NVIDIA {{gpu}}"),
                                                  ("gpu_gfx_activity", "{{host}} AMD {{gpu_id}}")], "percent"),
        _panel(8, "GPU power (W)", 12, 24, [("DCGM_FI_DEV_POWER_USAGE", "{{host}} NVIDIA {{gpu}}"),
                                             ("gpu_package_power", "{{host}} AMD {{gpu_id}}")], "watt"),
        _panel(9, "AMD memory used (MiB)", 0, 32, [("gpu_used_vram", "{{host}} AMD {{gpu_id}}")], "decmbytes"),
        _panel(10, "Host memory available (CPU workers, master RAM)", 12, 32,
               [("node_memory_MemAvailable_bytes", "{{host}}")], "bytes"),
    ]
    return panels


def dashboard(cfg: ClusterConfig, plan: Plan) -> str:
    doc = {"uid": f"hydra-{cfg.cluster.name}"[:40], "title": f"hydra-compose: {cfg.cluster.name}",
           "description": HEADER.format(config="cluster.yaml"), "tags": ["hydra-compose", "llama.cpp"],
           "timezone": "browser", "schemaVersion": 41, "version": 1, "editable": False, "refresh": "10s",
           "time": {"from": "now-1h", "to": "now"}, "panels": dashboard_queries(cfg, plan),
           "templating": {"list": []}, "annotations": {"list": []}}
    return json.dumps(doc, indent=2) + "\n"


def render_monitoring(cfg: ClusterConfig, plan: Plan, replicas: int = 1) -> list[RenderedFile]:
    """compose/<master>/monitoring/: Prometheus' configuration and Grafana's provisioning and dashboard."""
    if not cfg.monitoring:
        return []
    base = f"compose/{cfg.master.host}/monitoring"
    url = master_url(cfg).rsplit(":", 1)[0] + f":{PROMETHEUS_PORT}"
    header = f"# {HEADER.format(config='cluster.yaml')}\n"
    datasource = {"apiVersion": 1, "datasources": [{"name": "Prometheus", "uid": DATASOURCE_UID, "type": "prometheus",
                                                    "access": "proxy", "url": url, "isDefault": True}]}
    provider = {"apiVersion": 1, "providers": [{"name": "hydra-compose", "type": "file", "disableDeletion": True,
                                                "options": {"path": "/var/lib/grafana/dashboards"}}]}
    return [RenderedFile(f"{base}/prometheus.yml", prometheus_config(cfg, replicas)),
            RenderedFile(f"{base}/grafana/provisioning/datasources/prometheus.yml",
                         header + yaml.safe_dump(datasource, sort_keys=False)),
            RenderedFile(f"{base}/grafana/provisioning/dashboards/hydra-compose.yml",
                         header + yaml.safe_dump(provider, sort_keys=False)),
            RenderedFile(f"{base}/grafana/dashboards/hydra-compose.json", dashboard(cfg, plan))]
