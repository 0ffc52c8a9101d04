"""What mutual TLS costs on the RPC link (issue 17): decode (tg) and prompt (pp) tok/s from llama-bench
through one CPU worker, plain and through the stunnel tunnels generate writes for `rpc_tls: true`
(worker host's terminator on 127.0.0.2, the master's tunnel on 127.0.1.1), on loopback and with a
1 ms round trip (the delay proxy of the tests between master and worker host). Plain and TLS
alternate, best of 3 rounds each, all in one run.

Usage: python bench/rpc_tls.py   (needs scripts/build-llama-native.sh and stunnel4)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import yaml  # noqa: E402

from speed_prediction import DENSE  # noqa: E402
from support.localrun import free_port, wait_port  # noqa: E402
from support.paths import NATIVE_BIN  # noqa: E402
from support.synthetic import write_gguf  # noqa: E402
from support.tls_tunnel import start_stunnel, stop  # noqa: E402

HERE = ROOT / "tests" / "support"


def bench(model: Path, endpoint: str) -> tuple[float, float]:
    out = subprocess.run([str(NATIVE_BIN / "llama-bench"), "-m", str(model), "--rpc", endpoint, "-ngl", "99",
                          "-p", "64", "-n", "64", "-r", "3", "-o", "json"], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    rows = json.loads(out.stdout[out.stdout.index("["):])
    return rows[1]["avg_ts"], rows[0]["avg_ts"]  # tg, pp


def spawn(argv: list[str], procs: list) -> None:  # noqa: ANN001
    procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="rpc-tls-"))
    port = free_port()
    (work / "models").mkdir()
    model = write_gguf(work / "models" / "dense.gguf", DENSE)
    (work / "cluster.yaml").write_text(yaml.safe_dump({
        "cluster": {"name": "bench", "rpc_tls": True}, "master": {"host": "m"}, "hosts": [
            {"name": "m", "address": "127.0.0.1", "devices": []},
            {"name": "box", "address": "127.0.0.2", "devices": [{"vendor": "cpu", "memory_gb": 2, "threads": 1,
                                                                "rpc_port": port}]}],
        "models": {"dense": {"file": "dense.gguf", "ctx": 512, "default": True}}}))
    subprocess.run(["hydra-compose", "generate"], cwd=work, check=True, capture_output=True)
    procs: list = []
    tunnels = []
    try:
        spawn(["sh", "-c", 'trap "" PIPE; exec "$@"', "sh", str(NATIVE_BIN / "ggml-rpc-server"), "-H", "127.0.0.1",
               "-p", str(port), "-t", "1", "-c"], procs)
        wait_port("127.0.0.1", port, 20)
        tunnels.append(start_stunnel(work, "box", work))
        # 1 ms RTT: a delay proxy in front of the worker (plain) and of its TLS terminator
        plain_slow, tls_slow = free_port(), free_port()
        for listen, target in ((plain_slow, f"127.0.0.1:{port}"), (tls_slow, f"127.0.0.2:{port}")):
            spawn([sys.executable, str(HERE / "delay_proxy.py"), f"127.0.0.1:{listen}", target, "0.5"], procs)
            wait_port("127.0.0.1", listen, 20)
        tunnels.append(start_stunnel(work, "m", work))
        slow_work = work / "slow"
        slow_work.mkdir()
        # the master's tunnel for the slow link: the same file, dialling the proxy, on another port
        slow_port = free_port()
        redirect = {f"connect = 127.0.0.2:{port}": f"connect = 127.0.0.1:{tls_slow}",
                    f"accept = 127.0.1.1:{port}": f"accept = 127.0.1.1:{slow_port}"}
        tunnels.append(start_stunnel(work, "m", slow_work, redirect))
        cases = {"loopback": (f"127.0.0.1:{port}", f"127.0.1.1:{port}"),
                 "1 ms RTT": (f"127.0.0.1:{plain_slow}", f"127.0.1.1:{slow_port}")}
        print(f"{'link':10} {'plain tg':>9} {'TLS tg':>8} {'ratio':>6}   {'plain pp':>9} {'TLS pp':>8} {'ratio':>6}")
        for name, (plain_ep, tls_ep) in cases.items():
            plain, tls = [], []
            for _ in range(3):
                plain.append(bench(model, plain_ep))
                tls.append(bench(model, tls_ep))
            ptg, ppp = max(t for t, _ in plain), max(p for _, p in plain)
            ttg, tpp = max(t for t, _ in tls), max(p for _, p in tls)
            print(f"{name:10} {ptg:9.1f} {ttg:8.1f} {ttg / ptg:6.3f}   {ppp:9.1f} {tpp:8.1f} {tpp / ppp:6.3f}")
    finally:
        for t in tunnels:
            stop(t)
        for p in procs:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
