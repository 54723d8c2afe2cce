"""podman as the deploy tier drives it: deploy/podman/env.sh's settings, checked calls."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PODMAN_DIR = ROOT / "deploy" / "podman"
PYTHON_BASE = "localhost/python-slim:local"
POSTGRES_IMAGE = "localhost/debian-postgres:local"
RABBITMQ_IMAGE = "localhost/debian-rabbitmq:local"
LABEL = "org.outbox-relay.deploy-test"  # on everything the tier creates, to find leftovers
# pip in a build reaches the package index through the machine's CA bundle.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(PODMAN_DIR / "containers.conf"), **extra}


def podman(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def build_project_image(tag: str) -> None:
    podman(
        "build",
        "--format=docker",  # the OCI format drops HEALTHCHECK
        "--network=host",
        f"--volume={CA_BUNDLE}:{CA_BUNDLE}:ro",
        f"--env=PIP_CERT={CA_BUNDLE}",
        f"--build-arg=BASE_IMAGE={PYTHON_BASE}",
        f"--label={LABEL}=1",
        "--file=deploy/Dockerfile",
        f"--tag={tag}",
        str(ROOT),
        timeout=600,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
