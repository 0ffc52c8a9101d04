"""Rendering for one Kubernetes cluster (generate --target kubernetes): the same plan as the
compose files, as manifests under k8s/ that `kubectl apply -k k8s/` installs.

Choices, and why:
- Pod network, one headless Service per worker, not host networking: a NetworkPolicy is only
  enforced on pod-network pods, and RPC has no authentication of its own. `--rpc` dials the
  Services' DNS names (ggml-rpc resolves names); publishNotReadyAddresses so the supervisor's own
  HELLO probe, not the pod's readiness, decides when a worker is there.
- One StatefulSet per worker (per GPU, or per host and vendor with rpc_server: per-host), pinned
  to its node by kubernetes.io/hostname, its GPUs requested from the vendor's device plugin, its
  tensor cache on a volume claim that outlives the pod.
- The master is a Deployment (Recreate: two would fight over the workers) running the same
  supervisor as on Docker: a worker pod that restarts makes it restart llama-server.
- Secrets never enter a manifest: kustomize's secretGenerator reads the 0600 key file and the
  TLS files next to kustomization.yaml.

Pure text, like compose.py: nothing here touches the disk except reading templates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import shlex

import yaml

from ..errors import RenderError
from ..inventory.config import ClusterConfig, Host
from ..inventory.topology import Worker, master_vendor, rpc_tls, rpc_workers, tls_hosts
from ..planner.fallback import Fallback
from ..planner.plan import Plan
from . import compose
from .server_args import PRESET_PATH, Routing, master_gpus, render_preset, router_args
from .compose import HEADER, TLS_DIR, RenderedFile, ServedModel, build_spec, image_name, render_tls_conf
from .images import host_image

OUT = "k8s"
APP = "hydra-compose"
LABEL = "hydra-compose.io"
API_KEY_FILE = "api-key.env"  # LLAMA_API_KEY=..., mode 0600, read by kustomize's secretGenerator
TLS_FILES = ("ca.crt", "host.crt", "host.key", "stunnel.conf")


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:  # every label block written out, no &id001 anchors
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None  # scripts and argument files stay readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(docs: list[dict], config_name: str) -> str:
    body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return f"# {HEADER.format(config=config_name)}\n{body}"


def _escaped(args: list[str]) -> list[str]:
    # the kubelet expands $(VAR) in command and args, and turns $$ into $
    return [a.replace("$", "$$") for a in args]


def dns_label(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def namespace(cfg: ClusterConfig) -> str:
    return cfg.kubernetes.namespace or dns_label(cfg.cluster.name)


def node_name(cfg: ClusterConfig, host: Host) -> str:
    name = cfg.kubernetes.nodes.get(host.name, host.name)
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", name):
        raise RenderError(f"host {host.name!r} is not a Kubernetes node name (lowercase letters, digits, '-', '.')",
                          f"map it in cluster.yaml: kubernetes: {{nodes: {{{host.name}: NODE}}}} (kubectl get nodes)")
    return name


def worker_name(w: Worker) -> str:
    """The StatefulSet and Service of one worker: rpc-<vendor><n>-<host>, at most 52 characters so
    the pod (-0) and its controller-revision label stay within Kubernetes' 63."""
    name = dns_label(f"{w.service}-{w.host}")
    if len(name) > 52:
        name = f"{name[:43].rstrip('-')}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def k8s_workers(cfg: ClusterConfig) -> list[Worker]:
    """The plan's workers that run as pods (Docker hosts; native hosts keep their own service)."""
    return [w for w in rpc_workers(cfg) if cfg.host(w.host).runtime == "docker"]


def tunnelled(cfg: ClusterConfig) -> set[str]:
    return {h.name for h in tls_hosts(cfg)} if rpc_tls(cfg) else set()


def service_dns(cfg: ClusterConfig, w: Worker) -> str:
    return f"{worker_name(w)}.{namespace(cfg)}.svc"


def pod_endpoints(cfg: ClusterConfig) -> dict[str, str]:
    """The plan's --rpc entries -> what the master pod dials: a worker's Service, or (rpc_tls) the
    same local tunnel address as on Docker, now inside the master pod."""
    tls = tunnelled(cfg)
    return {w.endpoint: f"{service_dns(cfg, w)}:{w.port}" for w in k8s_workers(cfg) if w.host not in tls}


def behind_tunnel(port: int) -> int:
    """The port a worker behind its pod's stunnel listens on (127.0.0.1): not the Service's port,
    which stunnel holds on every address of the pod (a pod's own address is not known beforehand)."""
    return port + 1 if port < 65535 else port - 1


def pod_links(cfg: ClusterConfig, host: Host) -> list[Worker]:
    """The TLS sections of a host's stunnel, with the pod network's addresses."""
    tls = tunnelled(cfg)
    if host.name == cfg.master.host:  # the master pod's tunnels: 127.0.1.k:port -> the worker's Service
        return [dataclasses.replace(w, tls_address=service_dns(cfg, w))
                for w in k8s_workers(cfg) if w.host in tls]
    # a worker pod's terminator: the Service port on every address -> its worker on loopback
    return [dataclasses.replace(w, tls_bind="0.0.0.0", bind="127.0.0.1", local_port=behind_tunnel(w.port))
            for w in k8s_workers(cfg) if w.host in tls and w.host == host.name]


def _labels(cfg: ClusterConfig, component: str, **extra: str) -> dict:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": dns_label(cfg.cluster.name),
            "app.kubernetes.io/component": component, **extra}


def _image(cfg: ClusterConfig, host: Host, vendor: str, target: str, source: compose.BuildSource) -> str:
    name = image_name(host_image(host, vendor), target, source)
    return f"{cfg.kubernetes.image_registry}/{name}" if cfg.kubernetes.image_registry else name


def _gpu_limits(devices: list) -> dict:
    limits: dict[str, int] = {}
    for d in devices:
        resource = d.record.k8s_resource(d)
        if resource:
            limits[resource] = limits.get(resource, 0) + 1
    return {"limits": limits} if limits else {}


def _runtime_class(cfg: ClusterConfig, devices: list, pod: dict) -> dict:
    """pod with the RuntimeClass its GPUs' vendor needs (kubernetes.runtime_classes), if any."""
    classes = {cfg.kubernetes.runtime_classes[d.vendor] for d in devices if d.vendor in cfg.kubernetes.runtime_classes}
    if len(classes) > 1:
        raise RenderError(f"one pod would need the runtime classes {', '.join(sorted(classes))}",
                          "give the vendors of one host the same runtime class, or none")
    return {"runtimeClassName": classes.pop(), **pod} if classes else pod


def _listening(port: int) -> dict:
    return {"exec": {"command": compose.listening_check(port)},
            "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3}


def _tls_container(image: str) -> dict:
    return {"name": "rpc-tls", "image": image, "command": ["stunnel", f"{TLS_DIR}/stunnel.conf"],
            "volumeMounts": [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}]}


def tls_secret(cfg: ClusterConfig, host: Host) -> str:
    return f"rpc-tls-{dns_label(host.name)}"


def _worker_docs(cfg: ClusterConfig, w: Worker, source: compose.BuildSource) -> list[dict]:
    host = cfg.host(w.host)
    name = worker_name(w)
    tls = w.host in tunnelled(cfg)
    labels = _labels(cfg, "rpc-worker", **{f"{LABEL}/worker": name})
    listen = behind_tunnel(w.port) if tls else w.port
    command = ["-H", "127.0.0.1" if tls else "0.0.0.0", "-p", str(listen), *w.device.record.worker_args(list(w.devices))]
    if w.backend_devices:
        command += ["-d", ",".join(w.backend_devices)]
    command.append("-c")
    image = _image(cfg, host, w.vendor, "rpc", source)
    worker = {"name": "ggml-rpc-server", "image": image, "args": _escaped(command),
              "readinessProbe": _listening(listen), "livenessProbe": _listening(listen),
              "volumeMounts": [{"name": "rpc-cache", "mountPath": "/cache"}]}
    resources = _gpu_limits(list(w.devices))
    if not w.device.is_gpu and w.device.threads:
        resources = {"requests": {"cpu": str(w.device.threads)}}
    if resources:
        worker["resources"] = resources
    if not tls:
        worker["ports"] = [{"name": "rpc", "containerPort": w.port}]
    containers = [worker]
    volumes = []
    if tls:  # the Service's port is stunnel's
        containers.append({**_tls_container(image), "ports": [{"name": "rpc", "containerPort": w.port}],
                           "readinessProbe": _listening(w.port), "livenessProbe": _listening(w.port)})
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret(cfg, host), "defaultMode": 0o400}})
    # the cache never holds more than the devices can: their memory, in whole GiB
    cache_gib = max(1, math.ceil(sum(d.memory_bytes for d in w.devices) / 1024**3))
    claim: dict = {"metadata": {"name": "rpc-cache"},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{cache_gib}Gi"}}}}
    if cfg.kubernetes.storage_class:
        claim["spec"]["storageClassName"] = cfg.kubernetes.storage_class
    pod: dict = {"nodeSelector": {"kubernetes.io/hostname": node_name(cfg, host)}, "containers": containers}
    if volumes:
        pod["volumes"] = volumes
    pod = _runtime_class(cfg, [d for d in w.devices if d.is_gpu], pod)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels,
                        "ports": [{"name": "rpc", "port": w.port, "targetPort": w.port}]}}
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "labels": labels},
           "spec": {"serviceName": name, "replicas": 1, "podManagementPolicy": "Parallel",
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": pod},
                    "volumeClaimTemplates": [claim]}}
    return [service, sts]


def _supervisor_docs(cfg: ClusterConfig, supervisor: str, fallback_files: list[RenderedFile],
                     preset: str | None = None) -> list[dict]:
    docs = [{"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "hydra-supervisor", "labels": _labels(cfg, "master")},
             "data": {"supervise.sh": supervisor, **({"models.ini": preset} if preset else {})}}]
    docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "hydra-fallback", "labels": _labels(cfg, "master")},
                 "data": {f.path.removeprefix("fallback/"): f.text for f in fallback_files}})
    return docs


def _master_docs(cfg: ClusterConfig, plan: Plan, args: list[str], source: compose.BuildSource,
                 config_digest: str, routing: Routing | None = None) -> list[dict]:
    host = cfg.master_host
    labels = _labels(cfg, "master")
    image = _image(cfg, host, master_vendor(cfg), "server", source)
    env: list[dict] = [{"name": "LLAMA_ARG_LOG_VERBOSITY", "value": "3"},
                       {"name": "HYDRA_FAILOVER_S", "value": str(cfg.master.failover_s)},
                       {"name": "HYDRA_FAILBACK_S", "value": str(cfg.master.failback_s)}]
    if routing:  # the router's children dial the workers; the supervisor waits for them all
        endpoints = pod_endpoints(cfg)
        env.append({"name": "HYDRA_RPC_WORKERS",
                    "value": ",".join(endpoints.get(e, e) for e in routing.plan.rpc_endpoints)})
    if cfg.master.api_key:
        env.append({"name": "LLAMA_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "hydra-api-key", "key": "LLAMA_API_KEY"}}})
    server: dict = {
        "name": "llama-server", "image": image, "command": ["/bin/bash", "/hydra/supervise.sh"],
        "args": _escaped(args), "env": env, "ports": [{"name": "http", "containerPort": cfg.master.port}],
        # ready once the model answers; alive unless the supervisor marks generation stalled, so a
        # model that loads for minutes (or a failover restart) is never killed for it
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5,
                           "timeoutSeconds": 3, "failureThreshold": 3},
        "livenessProbe": {"exec": {"command": ["bash", "-c", "! test -e /tmp/hydra-stalled"]},
                          "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True},
                         {"name": "supervisor", "mountPath": "/hydra/supervise.sh", "subPath": "supervise.sh",
                          "readOnly": True},
                         {"name": "fallback", "mountPath": "/hydra/fallback", "readOnly": True}]}
    if routing:
        server["volumeMounts"].append({"name": "supervisor", "mountPath": PRESET_PATH, "subPath": "models.ini",
                                       "readOnly": True})
    plans = [m.plan for m in routing.plan.models] if routing else [plan]
    gpus = master_gpus(plans)
    if gpus:
        server["resources"] = _gpu_limits(gpus)
    volumes: list[dict] = [
        {"name": "models", "hostPath": {"path": cfg.kubernetes.models_path, "type": "Directory"}},
        {"name": "supervisor", "configMap": {"name": "hydra-supervisor", "defaultMode": 0o555}},
        {"name": "fallback", "configMap": {"name": "hydra-fallback"}}]
    containers = [server]
    if pod_links(cfg, host):
        containers.append(_tls_container(image))
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret(cfg, host), "defaultMode": 0o400}})
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llama-server", "labels": labels},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
                 "template": {
                     # a changed plan, supervisor or fallback rolls the pod (ConfigMaps alone would not)
                     "metadata": {"labels": labels, "annotations": {f"{LABEL}/config": config_digest}},
                     "spec": _runtime_class(cfg, gpus, {
                         "nodeSelector": {"kubernetes.io/hostname": node_name(cfg, host)},
                         "terminationGracePeriodSeconds": 30, "containers": containers, "volumes": volumes})}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "llama-server", "labels": labels},
               "spec": {"type": cfg.kubernetes.service_type, "selector": labels,
                        "ports": [{"name": "http", "port": cfg.master.port, "targetPort": "http"}]}}
    return [deployment, service]


def _network_policy(cfg: ClusterConfig, workers: list[Worker]) -> dict:
    ports = sorted({w.port for w in workers})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "rpc-from-master-only", "labels": _labels(cfg, "rpc-worker")},
            "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "rpc-worker",
                                                     "app.kubernetes.io/instance": dns_label(cfg.cluster.name)}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": _labels(cfg, "master")}}],
                                  "ports": [{"protocol": "TCP", "port": p} for p in ports]}]}}


def _kustomization(cfg: ClusterConfig, resources: list[str], tls: list[Host]) -> str:
    doc: dict = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                 "namespace": namespace(cfg), "resources": resources}
    secrets = []
    if cfg.master.api_key:
        secrets.append({"name": "hydra-api-key", "envs": [API_KEY_FILE]})
    for host in tls:
        secrets.append({"name": tls_secret(cfg, host),
                        "files": [f"tls/{host.name}/{f}" for f in TLS_FILES]})
    if secrets:
        doc["secretGenerator"] = secrets
    return _dump([doc], "cluster.yaml")


def build_script(cfg: ClusterConfig, source: compose.BuildSource) -> str:
    """k8s/build-images.sh: builds every image the manifests name (on a machine with Docker) and,
    with image_registry, pushes it there. Paths relative to k8s/."""
    lines = ["#!/bin/sh", f"# {HEADER.format(config='cluster.yaml')}",
             "# Builds the images the manifests use" + (" and pushes them to " + cfg.kubernetes.image_registry
                                                         if cfg.kubernetes.image_registry else
                                                         "; without kubernetes.image_registry every node must "
                                                         "have them (k3s: docker save | k3s ctr images import -)"),
             "set -eu", 'cd "$(dirname "$0")"']
    seen = set()
    wanted = [(cfg.host(w.host), w.vendor, "rpc") for w in k8s_workers(cfg)]
    wanted.append((cfg.master_host, master_vendor(cfg), "server"))
    for host, vendor, target in wanted:
        image = _image(cfg, host, vendor, target, source)
        if image in seen:
            continue
        seen.add(image)
        spec = build_spec(host_image(host, vendor), target, source, cfg)
        dockerfile = spec["dockerfile"]
        if not dockerfile.startswith("/"):
            dockerfile = f"{spec['context']}/{dockerfile}"
        cmd = ["docker", "build", "--target", target, "-f", dockerfile]
        for k, v in spec["args"].items():
            cmd += ["--build-arg", f"{k}={v}"]
        cmd += ["-t", image, spec["context"]]
        lines.append(" ".join(shlex.quote(c) for c in cmd))
        if cfg.kubernetes.image_registry:
            lines.append(f"docker push {shlex.quote(image)}")
    return "\n".join(lines) + "\n"


def render_kubernetes(cfg: ClusterConfig, plan: Plan, served: ServedModel, fallbacks: list[Fallback],
                      source: compose.BuildSource, config_name: str, supervisor: str,
                      routing: Routing | None = None) -> list[RenderedFile]:
    """k8s/*.yaml, kustomization.yaml, build-images.sh and each TLS host's stunnel.conf (its keys and
    the API key file come from generate: they are secrets, not text rendered from the plan)."""
    ns = namespace(cfg)
    workers = k8s_workers(cfg)
    names = [worker_name(w) for w in workers]
    if len(set(names)) != len(names):
        dupe = next(n for n in names if names.count(n) > 1)
        raise RenderError(f"two workers would both be named {dupe} on Kubernetes (host names that differ only in "
                          "case, '.' or '_')", "rename one of the hosts in cluster.yaml")
    fallback_files = render_fallbacks_for_pods(cfg, fallbacks, served)
    preset = render_preset(routing, pod_endpoints(cfg)) if routing else None
    args = (router_args(cfg, routing, bind="0.0.0.0") if routing else
            compose.server_args(cfg, plan, served, bind="0.0.0.0", endpoints=pod_endpoints(cfg)))
    digest = hashlib.sha256("\n".join([supervisor, *(f.path + f.text for f in fallback_files), *args, preset or ""])
                            .encode()).hexdigest()[:16]
    files = [RenderedFile(f"{OUT}/namespace.yaml", _dump([{
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"app.kubernetes.io/name": APP}}}],
        config_name))]
    files.append(RenderedFile(f"{OUT}/supervisor.yaml", _dump(_supervisor_docs(cfg, supervisor, fallback_files, preset),
                                                             config_name)))
    files.append(RenderedFile(f"{OUT}/master.yaml", _dump(_master_docs(cfg, plan, args, source, digest, routing),
                                                         config_name)))
    resources = ["namespace.yaml", "supervisor.yaml", "master.yaml"]
    for w, name in zip(workers, names):
        files.append(RenderedFile(f"{OUT}/{name}.yaml", _dump(_worker_docs(cfg, w, source), config_name)))
        resources.append(f"{name}.yaml")
    if workers:
        files.append(RenderedFile(f"{OUT}/network-policy.yaml", _dump([_network_policy(cfg, workers)], config_name)))
        resources.append("network-policy.yaml")
    tls = tls_hosts_for_pods(cfg)
    for host in tls:
        files.append(RenderedFile(f"{OUT}/tls/{host.name}/stunnel.conf",
                                  render_tls_conf(cfg, host, pod_links(cfg, host))))
    files.append(RenderedFile(f"{OUT}/kustomization.yaml", _kustomization(cfg, resources, tls)))
    files.append(RenderedFile(f"{OUT}/build-images.sh", build_script(cfg, source), mode=0o755))
    return files


def render_fallbacks_for_pods(cfg: ClusterConfig, fallbacks: list[Fallback], served: ServedModel) -> list[RenderedFile]:
    return compose.render_fallbacks(cfg, list(fallbacks), served, "0.0.0.0", pod_endpoints(cfg))


def tls_hosts_for_pods(cfg: ClusterConfig) -> list[Host]:
    """Hosts whose pods carry a stunnel (and get a key and certificate)."""
    if not tunnelled(cfg):
        return []
    return [h for h in [cfg.master_host, *tls_hosts(cfg)] if pod_links(cfg, h)]



def render_notes(cfg: ClusterConfig) -> list[str]:
    """What generate --target kubernetes warns about: what a device plugin cannot honour, images
    no node has yet, and links outside the pod network."""
    notes = [n for spec in _all_specs(cfg) for n in spec.notes]
    for host in cfg.hosts:
        singles = [w for w in k8s_workers(cfg) if w.host == host.name and w.device.is_gpu and len(w.devices) == 1]
        for vendor in dict.fromkeys(w.vendor for w in singles):
            kinds = {(w.device.name, w.device.vram_gb) for w in singles if w.vendor == vendor}
            if len(kinds) > 1:
                notes.append(f"{host.name}: its {vendor} GPUs differ, and a device plugin hands each worker pod "
                             "any free one, not the one planned: set rpc_server: per-host on it (one pod, all "
                             "its GPUs), or give each card its own node")
    if not cfg.kubernetes.image_registry:
        notes.append("kubernetes.image_registry is not set: run k8s/build-images.sh and import the images on "
                     "every node (k3s: docker save IMAGE | sudo k3s ctr images import -)")
    if cfg.master.api_keys:
        notes.append("master.api_keys: users' keys are kept in the compose target's .env; on Kubernetes append "
                     "them to k8s/api-key.env (LLAMA_API_KEY=cluster-key,user-key,...) and apply again")
    if cfg.monitoring:
        notes.append("monitoring: true writes a compose profile; on Kubernetes scrape the llama-server Service's "
                     "/metrics with your Prometheus (kube-prometheus-stack) and the vendors' exporters")
    if any(h.runtime == "native" for h in cfg.hosts):
        names = ", ".join(h.name for h in cfg.hosts if h.runtime == "native")
        notes.append(f"{names}: native workers stay outside Kubernetes with plain RPC: allow their ports only "
                     "from the master's node")
    return notes


def _all_specs(cfg: ClusterConfig) -> list:
    specs = {host_image(cfg.host(w.host), w.vendor) for w in k8s_workers(cfg)}
    specs.add(host_image(cfg.master_host, master_vendor(cfg)))
    return sorted(specs, key=lambda s: s.tag)
