"""The cluster's certificates for mutual TLS on the RPC links: one CA (its key stays in pki/ on the
machine that runs generate, never mounted anywhere) and one key + certificate per host, named for
the host and its address. Made once and kept, so generating again changes nothing; `generate
--rotate-certs` makes a new CA and new certificates. Keys are written 0600."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import OutputError
from ..inventory.config import Host
from ..render.compose import RenderedFile

CA_DIR = "pki"
VALID_DAYS = 3650


@dataclass(frozen=True)
class _Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _load(cert_file: Path, key_file: Path) -> _Pair | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return _Pair(cert, key)


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS)))


def _new_ca(cluster: str) -> _Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hydra-compose {cluster} CA")])
    cert = (_builder(f"hydra-compose {cluster} CA", name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _Pair(cert, key)


def _names(host: Host) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(host.name)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host.address)))
    except ValueError:
        names.append(x509.DNSName(host.address))
    return names


def _issued_by(pair: _Pair, ca: _Pair, host: Host) -> bool:
    try:
        ca.cert.public_key().verify(pair.cert.signature, pair.cert.tbs_certificate_bytes,
                                    ec.ECDSA(pair.cert.signature_hash_algorithm))
        san = pair.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (InvalidSignature, x509.ExtensionNotFound, ValueError):
        return False
    still_valid = pair.cert.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc)
    return set(san) == set(_names(host)) and still_valid


def _new_host(host: Host, ca: _Pair) -> _Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(host.name, ca.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    return _Pair(cert, key)


def cluster_certificates(out_dir: Path, cluster: str, hosts: list[Host], rotate: bool,
                         tls_dir: str = "compose/{host}/tls") -> list[RenderedFile]:
    """pki/ca.{crt,key} and <tls_dir>/{ca.crt,host.crt,host.key} for these hosts: the ones on
    disk when still valid for this CA, host name and address (and not rotating), else new ones."""
    ca_dir = out_dir / CA_DIR
    ca = None if rotate else _load(ca_dir / "ca.crt", ca_dir / "ca.key")
    if ca is None and not rotate and (ca_dir / "ca.crt").exists():
        raise OutputError(f"{ca_dir / 'ca.crt'} or its key cannot be read",
                          "restore them, or pass --rotate-certs to make a new CA (every host then needs its new "
                          "certificate: run up on all of them)")
    fresh = ca is None
    if ca is None:
        ca = _new_ca(cluster)
    files = [RenderedFile(f"{CA_DIR}/ca.crt", _pem_cert(ca.cert)),
             RenderedFile(f"{CA_DIR}/ca.key", _pem_key(ca.key), 0o600)]
    for host in hosts:
        rel = tls_dir.format(host=host.name)
        tls = out_dir / rel
        pair = None if fresh else _load(tls / "host.crt", tls / "host.key")
        if pair is None or not _issued_by(pair, ca, host):
            pair = _new_host(host, ca)
        files += [RenderedFile(f"{rel}/ca.crt", _pem_cert(ca.cert)),
                  RenderedFile(f"{rel}/host.crt", _pem_cert(pair.cert)),
                  RenderedFile(f"{rel}/host.key", _pem_key(pair.key), 0o600)]
    return files
