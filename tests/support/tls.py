"""A throwaway certificate authority for TLS tests, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.services import in_ci


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of these


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", key, "-out", cert)  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions, encoding="utf-8")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", key, "-out", csr)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "2", "-out", cert, "-extfile", ext_file)  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        reason = "the openssl command is needed to make test certificates (apt install openssl)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    ca = _ca(directory, "outbox-test-ca")
    other_ca, _ = _ca(directory, "unrelated-ca")
    server = _leaf(
        directory,
        "localhost",
        ca,
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    client = _leaf(
        directory,
        "outbox-relay",
        ca,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)
