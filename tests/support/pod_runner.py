"""Runs generated Kubernetes pods on this machine's Docker, the way a kubelet would, to prove the
manifests' commands, mounts, secrets and probes work together without a Kubernetes cluster:

- one user-defined Docker network is the pod network; a Service's DNS name (NAME.NS.svc) is a
  network alias of its pod, so --rpc and stunnel's connect= resolve exactly as written;
- a pause container (the pod's first image, sleeping) owns the pod's network namespace and the
  pod's containers join it (--network container:), so a sidecar's 127.0.1.k tunnel is the main
  container's too and a container restart leaves its sidecars' network alone, as in a pod;
- ConfigMaps are written out and mounted (subPath: one file), secretGenerator files become the
  Secret's mounted files and secretKeyRef values, a hostPath is the test's models/, a volume claim
  template a Docker volume;
- the kubelet's $$ -> $ in command and args is applied; exec probes run with docker exec.

Containers, the network and volumes carry one prefix and are removed by name on close.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _kubelet_args(args: list) -> list[str]:
    return [str(a).replace("$$", "$") for a in args]


@dataclass
class Pod:
    name: str
    pause: str  # owns the network namespace
    containers: list[str]  # docker container names, in the manifest's order


@dataclass
class PodRunner:
    k8s: Path
    models: Path
    work: Path
    prefix: str = "hydra-k8s-test"
    pods: dict[str, Pod] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kustomization = yaml.safe_load((self.k8s / "kustomization.yaml").read_text())
        self.namespace = self.kustomization["namespace"]
        self.docs = [d for f in self.kustomization["resources"]
                     for d in yaml.safe_load_all((self.k8s / f).read_text()) if d]
        self.network = f"{self.prefix}-net"
        r = docker("network", "create", self.network)
        assert r.returncode == 0, r.stderr

    def objects(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def _secret(self, name: str) -> dict:
        return next(g for g in self.kustomization.get("secretGenerator", []) if g["name"] == name)

    def _secret_value(self, name: str, key: str) -> str:
        for env_file in self._secret(name).get("envs", []):
            for line in (self.k8s / env_file).read_text().splitlines():
                if line.startswith(f"{key}="):
                    return line.split("=", 1)[1]
        raise KeyError(f"{name}/{key}")

    def _volume_source(self, pod: str, volume: dict) -> Path | str:
        """A host path (or Docker volume name) holding the volume's files."""
        if "hostPath" in volume:
            return self.models  # the only hostPath: models/ on the master's node
        if "configMap" in volume:
            cm = next(c for c in self.objects("ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"])
            d = self.work / "configmaps" / cm["metadata"]["name"]
            d.mkdir(parents=True, exist_ok=True)
            for key, text in (cm.get("data") or {}).items():
                (d / key).write_text(text)
                os.chmod(d / key, volume["configMap"].get("defaultMode", 0o644))
            return d
        if "secret" in volume:
            d = self.work / "secrets" / volume["secret"]["secretName"]
            d.mkdir(parents=True, exist_ok=True)
            for f in self._secret(volume["secret"]["secretName"]).get("files", []):
                target = d / Path(f).name
                target.write_bytes((self.k8s / f).read_bytes())
                os.chmod(target, volume["secret"].get("defaultMode", 0o644))
            return d
        raise AssertionError(f"volume kind not emulated: {volume}")

    def start(self, workload: dict, publish: dict[int, int] | None = None) -> Pod:
        name = workload["metadata"]["name"]
        spec = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: self._volume_source(name, v) for v in spec.get("volumes", [])}
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            vol = f"{self.prefix}-{name}-{claim['metadata']['name']}"
            docker("volume", "create", vol)
            self.volumes.append(vol)
            volumes[claim["metadata"]["name"]] = vol
        aliases = [f"{s['metadata']['name']}.{self.namespace}.svc" for s in self.objects("Service")
                   if s["spec"].get("clusterIP") == "None" and s["spec"]["selector"] == workload["spec"]["selector"][
                       "matchLabels"]]
        pod = Pod(name, f"{self.prefix}-{name}-pause", [])
        argv = ["run", "-d", "--name", pod.pause, "--network", self.network, "--hostname", f"{name}-0",
                "--entrypoint", "sleep"]
        for alias in aliases:
            argv += ["--network-alias", alias]
        for host_port, port in (publish or {}).items():
            argv += ["-p", f"127.0.0.1:{host_port}:{port}"]
        r = docker(*argv, spec["containers"][0]["image"], "infinity")
        assert r.returncode == 0, f"{pod.pause}: {r.stderr}"
        self.pods[name] = pod
        for c in spec["containers"]:
            cname = f"{self.prefix}-{name}-{c['name']}"
            argv = ["run", "-d", "--name", cname, "--network", f"container:{pod.pause}"]
            for e in c.get("env", []):
                value = e.get("value")
                if value is None:
                    ref = e["valueFrom"]["secretKeyRef"]
                    value = self._secret_value(ref["name"], ref["key"])
                argv += ["-e", f"{e['name']}={value}"]
            for m in c.get("volumeMounts", []):
                source = volumes[m["name"]]
                if "subPath" in m:
                    source = Path(source) / m["subPath"]
                argv += ["-v", f"{source}:{m['mountPath']}{':ro' if m.get('readOnly') else ''}"]
            command = _kubelet_args(c.get("command", []))
            if command:
                argv += ["--entrypoint", command[0]]
            argv += [c["image"], *command[1:], *_kubelet_args(c.get("args", []))]
            r = docker(*argv)
            assert r.returncode == 0, f"{cname}: {r.stderr}"
            pod.containers.append(cname)
        return pod

    def exec_probe(self, workload: dict, probe: str = "readinessProbe") -> bool:
        """Runs each container's exec probe of this kind; True when all pass."""
        name = workload["metadata"]["name"]
        ok = True
        for c in workload["spec"]["template"]["spec"]["containers"]:
            cmd = c.get(probe, {}).get("exec", {}).get("command")
            if cmd:
                r = docker("exec", f"{self.prefix}-{name}-{c['name']}", *cmd, timeout=30)
                ok = ok and r.returncode == 0
        return ok

    def ip(self, pod: str) -> str:
        r = docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
                   self.pods[pod].pause)
        return r.stdout.strip()

    def logs(self) -> str:
        return "".join(f"--- {c}\n{docker('logs', '--tail', '60', c).stderr}{docker('logs', '--tail', '60', c).stdout}"
                       for p in self.pods.values() for c in p.containers)

    def close(self) -> None:
        names = [c for p in self.pods.values() for c in [*reversed(p.containers), p.pause]]
        if names:
            docker("rm", "-f", *names)
        for vol in self.volumes:
            docker("volume", "rm", "-f", vol)
        docker("network", "rm", self.network)
