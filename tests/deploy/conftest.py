"""The deploy tier: the image, the relay container and the compose example, run for real
with podman (`make deploy-test`; not part of `make test`).

deploy/podman/setup.sh installs podman, runc, mmdebstrap and podman-compose when missing
and builds the base images from Debian's packages once (kept between runs, by tag);
`make deploy-test` runs it before pytest, so that a first run's few minutes do not count
against the first test's timeout. The project's image is built for each session (podman's
layer cache makes an unchanged tree a matter of seconds) and removed afterwards, as is
every container, network and volume the tests create.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.deploy.podman import LABEL, PODMAN_DIR, build_project_image, podman

SETUP_TIMEOUT_S = 900  # a first run installs packages and builds three base images


@pytest.fixture(scope="session")
def podman_ready() -> None:
    result = subprocess.run(
        ["bash", str(PODMAN_DIR / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"deploy/podman/setup.sh exited {result.returncode}:\n{result.stdout}{result.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def relay_image(podman_ready: None) -> Iterator[str]:
    tag = f"localhost/outbox-relay:deploy-test-{uuid.uuid4().hex[:8]}"
    try:
        build_project_image(tag)
        yield tag
    finally:
        podman("rmi", "--force", tag, check=False)
        # the build stage's image and any other layer this test run left behind
        podman("image", "prune", "--force", f"--filter=label={LABEL}", check=False)
