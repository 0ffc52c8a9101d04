"""generate --target kubernetes: golden manifests for every example inventory, strict schema
validation offline (kubernetes-validate), and the plan carried over exactly: --rpc, GPU requests,
ports, secrets."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT, invoke, run_cli
from test_generate import EXAMPLES, example_project

from hydra_compose.inventory.config import load_config
from hydra_compose.inventory.topology import rpc_workers
from hydra_compose.render.kubernetes import k8s_workers, service_dns, worker_name

GOLDEN = ROOT / "tests" / "golden" / "kubernetes"
# replicas behind a balancer are written for the compose target only (tests/test_replicas.py)
K8S_EXAMPLES = [e for e in EXAMPLES if e != "replicas-lab"]
K8S_VERSION = "1.37.0"  # the newest schemas kubernetes-validate ships offline


def generate_k8s(proj: Path, *extra: str) -> dict[str, str]:
    r = run_cli("generate", "--target", "kubernetes", *extra, cwd=proj)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "kubectl apply -k k8s/" in r.stdout
    return {str(p.relative_to(proj)): p.read_text() for p in sorted((proj / "k8s").rglob("*")) if p.is_file()}


def documents(proj: Path) -> list[tuple[str, dict]]:
    """Every Kubernetes object the manifests hold (kustomization.yaml is kustomize's, not one)."""
    out = []
    for f in sorted((proj / "k8s").glob("*.yaml")):
        if f.name != "kustomization.yaml":
            out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def kinds(docs: list[tuple[str, dict]], kind: str) -> list[dict]:
    return [d for _, d in docs if d["kind"] == kind]


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_golden(name, tmp_path):
    proj = example_project(tmp_path, name)
    files = generate_k8s(proj)
    files = {k: "<random>\n" if k.endswith((".crt", ".key")) else v for k, v in files.items()}
    files = {k: re.sub(r"(?m)^LLAMA_API_KEY=.*$", "LLAMA_API_KEY=<random>", v) for k, v in files.items()}
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        for rel, text in files.items():
            (golden / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden / rel).write_text(text)
    expected = {str(p.relative_to(golden)): p.read_text() for p in sorted(golden.rglob("*")) if p.is_file()}
    assert files == expected


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_manifests_pass_strict_schema_validation(name, tmp_path):
    proj = example_project(tmp_path, name)
    generate_k8s(proj)
    docs = documents(proj)
    assert {"Namespace", "ConfigMap", "Deployment", "Service"} <= {d["kind"] for _, d in docs}
    for file, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any unknown or mistyped field


def test_validation_catches_a_mistyped_field(tmp_path):
    """The check above can fail: a misspelt key in a generated Deployment is rejected."""
    proj = example_project(tmp_path, "cpu-default")
    generate_k8s(proj)
    deployment = copy.deepcopy(kinds(documents(proj), "Deployment")[0])
    container(deployment["spec"]["template"]["spec"], "llama-server")["readinesProbe"] = {"tcpSocket": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_kustomization_lists_every_manifest_and_secret_file(name, tmp_path):
    proj = example_project(tmp_path, name)
    generate_k8s(proj)
    k = yaml.safe_load((proj / "k8s" / "kustomization.yaml").read_text())
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources", "secretGenerator"}
    assert k["kind"] == "Kustomization"
    manifests = sorted(p.name for p in (proj / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(k["resources"]) == manifests
    ns = kinds(documents(proj), "Namespace")[0]["metadata"]["name"]
    assert k["namespace"] == ns
    for gen in k.get("secretGenerator", []):
        for f in gen.get("files", []) + gen.get("envs", []):
            assert (proj / "k8s" / f).is_file(), f
    # every Secret a pod mounts or reads comes from the generator
    generated = {g["name"] for g in k.get("secretGenerator", [])}
    for _, doc in documents(proj):
        text = yaml.safe_dump(doc)
        for ref in re.findall(r"secretName: (\S+)", text) + re.findall(r"secretKeyRef:\n\s+key: \S+\n\s+name: (\S+)",
                                                                        text):
            assert ref in generated


@pytest.mark.parametrize("name", K8S_EXAMPLES)
def test_rpc_list_matches_the_workers_and_gpu_requests_match_the_plan(name, tmp_path):
    proj = example_project(tmp_path, name)
    generate_k8s(proj)
    cfg = load_config(proj / "cluster.yaml")
    docs = documents(proj)
    sets = {d["metadata"]["name"]: d for d in kinds(docs, "StatefulSet")}
    services = {d["metadata"]["name"]: d for d in kinds(docs, "Service")}
    master = kinds(docs, "Deployment")[0]["spec"]["template"]["spec"]
    args = container(master, "llama-server")["args"]
    rpc = args[args.index("--rpc") + 1].split(",") if "--rpc" in args else []
    assert len(rpc) == len(set(rpc))
    tunnels = {}
    tls_conf = proj / "k8s" / "tls" / cfg.master.host / "stunnel.conf"
    if tls_conf.exists():  # accept = 127.0.1.k:port -> connect = <service>:port
        for accept, connect in re.findall(r"accept = (\S+)\nconnect = (\S+)", tls_conf.read_text()):
            tunnels[accept] = connect
    planned = {w.endpoint: w for w in rpc_workers(cfg)}
    pods = {w.endpoint: w for w in k8s_workers(cfg)}
    dialled = []
    for entry in rpc:
        target = tunnels.get(entry, entry)
        host, port = target.rsplit(":", 1)
        if host.endswith(".svc"):  # a worker pod: its Service exists and serves that port
            svc = services[host.split(".")[0]]
            assert [p["port"] for p in svc["spec"]["ports"]] == [int(port)]
            dialled.append(host.split(".")[0])
        else:  # a native host outside Kubernetes: dialled at its own address
            assert entry in planned and entry not in pods
            dialled.append(entry)
    assert len(dialled) == len(set(dialled))  # every worker at most once
    for endpoint, w in pods.items():
        name_ = worker_name(w)
        assert name_ in sets and name_ in services
        pod = sets[name_]["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": cfg.kubernetes.nodes.get(w.host, w.host)}
        limits = container(pod, "ggml-rpc-server").get("resources", {}).get("limits", {})
        wanted: dict[str, int] = {}
        for d in w.devices:
            res = d.record.k8s_resource(d)
            if res:
                wanted[res] = wanted.get(res, 0) + 1
        assert limits == wanted, (name_, limits, wanted)
    # the master asks for exactly its local GPUs
    from hydra_compose.inventory.topology import local_gpus

    local: dict[str, int] = {}
    for d in local_gpus(cfg):
        res = d.record.k8s_resource(d)
        local[res] = local.get(res, 0) + 1
    assert container(master, "llama-server").get("resources", {}).get("limits", {}) == local
    # the NetworkPolicy admits every worker port, from the master only
    if pods:
        policy = kinds(docs, "NetworkPolicy")[0]["spec"]
        assert sorted(p["port"] for p in policy["ingress"][0]["ports"]) == sorted({w.port for w in pods.values()})
        assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "master"


def test_rpc_list_names_every_used_worker_once(tmp_path):
    """nvidia-per-host pools three hosts (one worker on the master's node, two behind TLS tunnels):
    each planned worker is dialled exactly once, and the fallback plans dial the same Services."""
    proj = example_project(tmp_path, "nvidia-per-host")
    generate_k8s(proj)
    cfg = load_config(proj / "cluster.yaml")
    docs = documents(proj)
    args = container(kinds(docs, "Deployment")[0]["spec"]["template"]["spec"], "llama-server")["args"]
    compose_args = yaml.safe_load(run_and_read_compose(tmp_path, "nvidia-per-host"))
    assert args.count("--rpc") == 1
    k8s_rpc = args[args.index("--rpc") + 1].split(",")
    compose_rpc = compose_args[compose_args.index("--rpc") + 1].split(",")
    assert len(k8s_rpc) == len(compose_rpc) >= 2  # the same plan: the same workers, in the same order
    for a, b in zip(k8s_rpc, compose_rpc):
        w = next(w for w in rpc_workers(cfg) if w.endpoint == b)
        assert a in (b, f"{service_dns(cfg, w)}:{w.port}")
    for key in ("--tensor-split", "-c", "--parallel"):
        assert args[args.index(key) + 1] == compose_args[compose_args.index(key) + 1]
    fallback = kinds(docs, "ConfigMap")[1]["data"]
    assert fallback  # a plan over three hosts has fallbacks
    names = {worker_name(w) for w in k8s_workers(cfg)}
    for text in fallback.values():
        lines = text.splitlines()
        assert lines[lines.index("--host") + 1] == "0.0.0.0"
        if "--rpc" in lines:
            entries = lines[lines.index("--rpc") + 1].split(",")
            assert len(entries) == len(set(entries))
            assert all(e.split(".")[0] in names for e in entries if ".svc:" in e)
            assert all(e.startswith("127.0.1.") for e in entries if ".svc:" not in e)


def run_and_read_compose(tmp_path: Path, name: str) -> str:
    (tmp_path / "compose").mkdir()
    proj = example_project(tmp_path / "compose", name)
    assert run_cli("generate", cwd=proj).returncode == 0
    cfg = load_config(proj / "cluster.yaml")
    doc = yaml.safe_load((proj / "compose" / cfg.master.host / "docker-compose.yml").read_text())
    return yaml.safe_dump([str(a).replace("$$", "$") for a in doc["services"]["llama-server"]["command"]])


def test_api_key_only_in_the_private_env_file(tmp_path):
    proj = example_project(tmp_path, "seed000-mixed")
    first = generate_k8s(proj)
    env = proj / "k8s" / "api-key.env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    key = re.search(r"^LLAMA_API_KEY=(\S+)$", env.read_text(), re.M)[1]
    assert len(key) >= 32
    for path in proj.rglob("*"):
        if path.is_file() and path != env and path.suffix != ".gguf":
            assert key not in path.read_text(errors="replace"), path
    assert generate_k8s(proj) == first  # regenerating keeps the key and changes nothing
    for key_file in (proj / "k8s" / "tls").rglob("host.key"):
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_without_rpc_tls_workers_listen_on_the_pod_network(tmp_path):
    proj = example_project(tmp_path, "nvidia-per-host")
    text = (proj / "cluster.yaml").read_text().replace("cluster:\n", "cluster:\n  rpc_tls: false\n", 1)
    (proj / "cluster.yaml").write_text(text)
    generate_k8s(proj)
    docs = documents(proj)
    assert not (proj / "k8s" / "tls").exists()
    for sts in kinds(docs, "StatefulSet"):
        pod = sts["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == ["ggml-rpc-server"]
        args = pod["containers"][0]["args"]
        assert args[args.index("-H") + 1] == "0.0.0.0"
    master = kinds(docs, "Deployment")[0]["spec"]["template"]["spec"]
    args = container(master, "llama-server")["args"]
    assert all(".svc:" in e for e in args[args.index("--rpc") + 1].split(","))


def test_registry_prefix_nodes_and_storage(tmp_path):
    proj = example_project(tmp_path, "cuda-mix")
    text = (proj / "cluster.yaml").read_text() + (
        "kubernetes:\n  image_registry: registry.lan:5000/lab\n  nodes: {old-server: node-7}\n"
        "  storage_class: local-path\n  namespace: llm\n  runtime_classes: {nvidia: nvidia}\n")
    (proj / "cluster.yaml").write_text(text)
    generate_k8s(proj)
    docs = documents(proj)
    for _, doc in docs:
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert c["image"].startswith("registry.lan:5000/lab/hydra-compose/llama-cpp:")
    sts = kinds(docs, "StatefulSet")
    for workload in sts + kinds(docs, "Deployment"):  # k3s runs NVIDIA pods under its nvidia RuntimeClass
        pod = workload["spec"]["template"]["spec"]
        gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in pod["containers"])
        assert pod.get("runtimeClassName") == ("nvidia" if gpu else None), workload["metadata"]["name"]
        kubernetes_validate.validate(workload, K8S_VERSION, strict=True)
    assert {s["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] for s in sts} == {"node-7"}
    assert {s["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] for s in sts} == {"local-path"}
    script = (proj / "k8s" / "build-images.sh").read_text()
    assert script.count("docker push registry.lan:5000/lab/") == script.count("docker build ")
    assert yaml.safe_load((proj / "k8s" / "kustomization.yaml").read_text())["namespace"] == "llm"


def test_dollar_in_arguments_survives_the_kubelet(tmp_path):
    """The kubelet expands $(VAR) in args and turns $$ into $: an argument with '$' is escaped."""
    from hydra_compose.render.kubernetes import _escaped

    assert _escaped(["a$(HOME)b", "x$$y", "plain"]) == ["a$$(HOME)b", "x$$$$y", "plain"]


@pytest.mark.parametrize("extra, message", [
    ("kubernetes:\n  nodes: {nowhere: n1}\n", "kubernetes.nodes names 'nowhere'"),
    ("kubernetes:\n  models_path: models\n", "absolute path"),
    ("kubernetes:\n  service_type: Ingress\n", "kubernetes.service_type"),
    ("kubernetes:\n  namespce: x\n", "kubernetes.namespce: unknown key"),
])
def test_bad_kubernetes_settings_are_one_line(tmp_path, extra, message):
    proj = example_project(tmp_path, "cpu-default")
    (proj / "cluster.yaml").write_text((proj / "cluster.yaml").read_text() + extra)
    r = run_cli("generate", "--target", "kubernetes", cwd=proj)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (proj / "k8s").exists()


def test_host_that_is_no_node_name_is_one_line(tmp_path):
    proj = example_project(tmp_path, "cpu-default")
    text = (proj / "cluster.yaml").read_text().replace("name: local", "name: Local_Box").replace(
        "host: local", "host: Local_Box")
    (proj / "cluster.yaml").write_text(text)
    r = run_cli("generate", "--target", "kubernetes", cwd=proj)
    assert r.returncode != 0
    assert "not a Kubernetes node name" in r.stderr and "kubernetes: {nodes: {Local_Box: NODE}}" in r.stderr
    assert not (proj / "k8s").exists()
    (proj / "cluster.yaml").write_text(text + "kubernetes:\n  nodes: {Local_Box: local-box}\n")
    r = run_cli("generate", "--target", "kubernetes", cwd=proj)
    assert r.returncode == 0, r.stderr


def test_unknown_target_and_compose_commands_on_kubernetes_are_one_line(tmp_path):
    proj = example_project(tmp_path, "cpu-default")
    r = run_cli("generate", "--target", "nomad", cwd=proj)
    assert r.returncode != 0 and "--target nomad is unknown" in r.stderr
    (proj / "cluster.yaml").write_text((proj / "cluster.yaml").read_text().replace(
        "cluster:\n", "cluster:\n  target: kubernetes\n", 1))
    assert run_cli("generate", cwd=proj).returncode == 0  # cluster.target alone selects it
    assert (proj / "k8s" / "kustomization.yaml").exists() and not (proj / "compose").exists()
    for command in ("up", "down", "logs", "swap"):
        r = run_cli(command, *(["smollm2"] if command == "swap" else []), cwd=proj)
        assert r.returncode != 0 and "cluster.target is kubernetes" in r.stderr, (command, r.stderr)
        assert "Traceback" not in r.stderr


def test_status_and_bench_use_the_service_address_and_the_key(tmp_path, runner):
    """A stand-in server at kubernetes.api_url that insists on the generated key: status finds it
    healthy, bench gets tokens; the key is never printed."""
    from support.fake_server import FakeLlama

    proj = example_project(tmp_path, "cpu-default")
    text = (proj / "cluster.yaml").read_text().replace("cluster:\n", "cluster:\n  target: kubernetes\n", 1)
    text = text.replace("  port: 8080\n", "  port: 8080\n  api_key: true\n", 1)
    fake = FakeLlama()
    try:
        (proj / "cluster.yaml").write_text(text + f"kubernetes:\n  api_url: {fake.url}\n")
        assert invoke(runner, "generate", cwd=proj).exit_code == 0
        key = re.search(r"LLAMA_API_KEY=(\S+)", (proj / "k8s" / "api-key.env").read_text())[1]
        fake.require_key = key
        r = invoke(runner, "status", "--json", cwd=proj)
        assert r.exit_code == 0, r.output
        st = yaml.safe_load(r.output)
        assert st["master"]["healthy"] is True and st["master"]["url"] == fake.url
        assert {w["endpoint"] for w in st["workers"]} == {"rpc-cpu0-local.hydra.svc:50052",
                                                          "rpc-cpu1-local.hydra.svc:50053"}
        r = invoke(runner, "bench", "--runs", "1", "--max-tokens", "8", cwd=proj)
        assert r.exit_code == 0, r.output
        assert fake.authorized >= 1 and key not in r.output
    finally:
        fake.close()
