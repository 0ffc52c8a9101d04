"""Mutual TLS on the RPC link (issue 17), with the files generate wrote: a real ggml-rpc-server behind
the worker host's stunnel, reached through the master's stunnel; a client without the cluster's
certificate gets no RPC answer; keys are 0600 and appear in no compose file or log; certificates are
kept across generate runs and replaced by --rotate-certs. The Docker stack runs it in
tests/test_failover_docker.py."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import struct
import subprocess

import pytest
import yaml

from conftest import REQUIRE_HEAVY, invoke
from support.localrun import free_port, wait_port
from support.synthetic import TEST_SHAPES, write_gguf
from support.tls_tunnel import start_stunnel, stop, stunnel_binary

from hydra_compose.runtime.rpc_hello import CAPS_SIZE, HELLO, hello

pytestmark = pytest.mark.native


@pytest.fixture
def stunnel_ok() -> None:
    if stunnel_binary() is None:
        if REQUIRE_HEAVY:
            pytest.fail("stunnel missing: scripts/test.sh installs stunnel4")
        pytest.skip("stunnel not installed")


def tls_project(tmp_path, port: int, rpc_tls: object = True):  # noqa: ANN001, ANN201
    raw = {"cluster": {"name": "t"}, "master": {"host": "m", "port": free_port()}, "hosts": [
        {"name": "m", "address": "127.0.0.1", "devices": []},
        {"name": "box", "address": "127.0.0.2", "devices": [{"vendor": "cpu", "memory_gb": 1, "threads": 1,
                                                            "rpc_port": port}]}],
        "models": {"tiny": {"file": "tiny.gguf", "ctx": 512, "default": True}}}
    if rpc_tls is not None:
        raw["cluster"]["rpc_tls"] = rpc_tls
    (tmp_path / "models").mkdir(exist_ok=True)
    write_gguf(tmp_path / "models" / "tiny.gguf", TEST_SHAPES[0])
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path


def self_made_cert(tmp_path):  # noqa: ANN001, ANN201
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "m")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "evil.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "evil.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return tmp_path / "evil.crt", tmp_path / "evil.key"


def tls_hello(port: int, cert=None, key=None) -> bytes:  # noqa: ANN001
    """HELLO over TLS to the worker host's terminator, as a client the cluster did not certify."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.2", port), timeout=3) as raw, \
                ctx.wrap_socket(raw, server_hostname="box") as tls:
            tls.sendall(struct.pack("<BQ", HELLO, CAPS_SIZE) + bytes(CAPS_SIZE))
            return tls.recv(64)
    except (ssl.SSLError, OSError):
        return b""


def test_rpc_only_through_the_clusters_certificates(tmp_path, native_bin, stunnel_ok, runner):
    port = free_port()
    (tmp_path / "p").mkdir()
    proj = tls_project(tmp_path / "p", port)
    r = invoke(runner, "generate", cwd=proj)
    assert r.exit_code == 0, r.output
    tls = proj / "compose" / "box" / "tls"
    for key in (tls / "host.key", proj / "compose" / "m" / "tls" / "host.key", proj / "pki" / "ca.key"):
        assert key.stat().st_mode & 0o777 == 0o600, key
    secrets = [p.read_text().split("-----")[2] for p in proj.rglob("*.key")]
    box = yaml.safe_load((proj / "compose" / "box" / "docker-compose.yml").read_text())
    assert box["services"]["rpc-cpu0"]["command"][:4] == ["-H", "127.0.0.1", "-p", str(port)]
    assert "127.0.1.1:" + str(port) in json.dumps(yaml.safe_load((proj / "compose" / "m" / "docker-compose.yml")
                                                                 .read_text())["services"]["llama-server"]["command"])

    worker = subprocess.Popen([str(native_bin / "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs = []
    try:
        wait_port("127.0.0.1", port, 20)
        procs = [start_stunnel(proj, "box", tmp_path), start_stunnel(proj, "m", tmp_path)]
        wait_port("127.0.0.2", port, 10)
        wait_port("127.0.1.1", port, 10)
        # the master's tunnel: a protocol answer, and llama.cpp decodes through it
        assert hello("127.0.1.1", port).version is not None
        bench = subprocess.run([str(native_bin / "llama-bench"), "-m", str(proj / "models" / "tiny.gguf"),
                                "--rpc", f"127.0.1.1:{port}", "-ngl", "99", "-p", "16", "-n", "16", "-r", "1",
                                "-o", "json"], capture_output=True, text=True, timeout=300)
        assert bench.returncode == 0, bench.stderr[-2000:]
        assert json.loads(bench.stdout[bench.stdout.index("["):])[1]["avg_ts"] > 0
        # anyone else on the LAN: plain RPC, TLS without a certificate, TLS with a self-made one
        assert hello("127.0.0.2", port, timeout_s=2).version is None
        assert tls_hello(port) == b""
        assert tls_hello(port, *self_made_cert(tmp_path)) == b""
        assert hello("127.0.1.1", port).version is not None  # the worker still serves the cluster
    finally:
        logs = [stop(p) for p in procs]
        worker.terminate()
        worker.wait(10)
    assert any("rejected" in log.lower() or "failed" in log.lower() or "error" in log.lower() for log in logs), logs
    for secret in secrets:  # no key in any compose file, stunnel.conf or log
        assert all(secret not in log for log in logs)
        assert all(secret not in p.read_text() for p in proj.rglob("*") if p.is_file() and p.suffix != ".key"
                   and p.suffix != ".gguf")


def test_certificates_kept_then_rotated(tmp_path, runner):
    proj = tls_project(tmp_path, 50052)
    assert invoke(runner, "generate", cwd=proj).exit_code == 0
    before = {p: p.read_bytes() for p in proj.rglob("*") if p.suffix in (".crt", ".key")}
    assert len(before) == 8  # pki/ca.{crt,key}, and ca.crt + host.{crt,key} for m and box
    r = invoke(runner, "generate", cwd=proj)
    assert r.exit_code == 0 and "wrote" not in r.output, r.output
    assert {p: p.read_bytes() for p in before} == before
    assert invoke(runner, "generate", "--rotate-certs", cwd=proj).exit_code == 0
    assert all(p.read_bytes() != data for p, data in before.items())


@pytest.mark.parametrize("rpc_tls, address, expected", [(None, "127.0.0.2", False), (None, "10.1.2.3", True),
                                                         (False, "10.1.2.3", False), (True, "127.0.0.2", True)])
def test_tls_default_follows_the_addresses(tmp_path, runner, rpc_tls, address, expected):
    proj = tls_project(tmp_path, 50052, rpc_tls)
    raw = yaml.safe_load((proj / "cluster.yaml").read_text())
    raw["hosts"][1]["address"] = address
    (proj / "cluster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert invoke(runner, "generate", cwd=proj).exit_code == 0
    assert (proj / "compose" / "box" / "tls" / "stunnel.conf").exists() == expected
    assert (proj / "pki").exists() == expected


def test_tls_on_a_127_0_0_1_worker_host_is_one_line(tmp_path):
    from conftest import run_cli

    proj = tls_project(tmp_path, 50052)
    raw = yaml.safe_load((proj / "cluster.yaml").read_text())
    raw["hosts"][1]["address"] = "127.0.0.1"
    raw["hosts"][1]["devices"][0]["rpc_port"] = 50099
    (proj / "cluster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 1 and "rpc_tls" in r.stderr and "Traceback" not in r.stderr
    assert not (proj / "compose").exists() and not (proj / "pki").exists()


@pytest.mark.parametrize("rpc_tls, warned", [(None, True), (False, False)])
def test_native_worker_host_is_named_as_plain(tmp_path, runner, rpc_tls, warned):
    proj = tls_project(tmp_path, 50052, rpc_tls)
    raw = yaml.safe_load((proj / "cluster.yaml").read_text())
    raw["hosts"][1].update(address="10.1.2.3", runtime="native")
    (proj / "cluster.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    r = invoke(runner, "generate", cwd=proj)
    assert r.exit_code == 0, r.output
    assert ("box: a native worker keeps plain RPC" in r.output) == warned
    assert not (proj / "pki").exists()  # no Docker worker host: nothing to lock with stunnel


def test_unreadable_ca_is_one_line_and_nothing_changes(tmp_path, runner):
    from conftest import run_cli

    proj = tls_project(tmp_path, 50052)
    assert invoke(runner, "generate", cwd=proj).exit_code == 0
    (proj / "pki" / "ca.key").write_text("not a key\n")
    before = {p: p.read_bytes() for p in proj.rglob("*") if p.is_file()}
    r = run_cli("generate", cwd=proj)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "ca.crt or its key cannot be read" in r.stderr and "--rotate-certs" in r.stderr
    assert {p: p.read_bytes() for p in proj.rglob("*") if p.is_file()} == before
