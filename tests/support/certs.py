"""A throw-away certificate authority and a server certificate it signed, made with the openssl CLI.

For tests that need a TLS vendor: the server certificate names ``localhost`` and ``127.0.0.1``;
a client trusts it only when told to trust ``ca`` (e.g. ``requests``' ``verify=ca`` or
``REQUESTS_CA_BUNDLE``), never by default.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TestCertificates", "make_certificates", "openssl_available"]

_CA_EXTENSIONS = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class TestCertificates:
    """PEM files: the CA certificate, the server's chain (server certificate, then CA) and key."""

    __test__ = False  # a value object, not a pytest test class

    ca: Path
    cert: Path
    key: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def make_certificates(directory: Path) -> TestCertificates:
    """Write a new CA and a ``localhost`` server certificate signed by it into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, leaf = directory / "server.key", directory / "server.csr", directory / "server-only.pem"
    ca_config = directory / "ca.cnf"
    ca_config.write_text(f"[req]\ndistinguished_name = dn\n[dn]\n[v3_ca]\n{_CA_EXTENSIONS}")
    (directory / "server.ext").write_text(_SERVER_EXTENSIONS)
    # EC keys: generated in milliseconds, where RSA keys cost a noticeable part of a second.
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=Router Test CA", "-extensions", "v3_ca", "-config", ca_config,
    )  # fmt: skip
    _openssl("req", *new_key, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", leaf, "-days", "2", "-extfile", directory / "server.ext",
    )  # fmt: skip
    cert = directory / "server.pem"
    # The chain a server sends: its own certificate, then the CA's.
    cert.write_bytes(leaf.read_bytes() + ca.read_bytes())
    return TestCertificates(ca=ca, cert=cert, key=key)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
