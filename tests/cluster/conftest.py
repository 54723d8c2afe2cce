"""The private services of the cluster tiers: a three-node RabbitMQ cluster, and a
PostgreSQL primary with a synchronous streaming standby."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.private_postgres import PrivatePostgres, private_postgres, private_standby
from tests.support.rabbit_cluster import RabbitCluster, rabbit_cluster
from tests.support.relay import wait_for

SYNCHRONOUS = "synchronous_commit = on\nsynchronous_standby_names = 'standby'\n"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RabbitCluster]:
    directory = tmp_path / "rabbit"
    directory.mkdir()
    with rabbit_cluster(directory) as started:
        yield started


@pytest.fixture
def databases() -> Iterator[tuple[PrivatePostgres, PrivatePostgres]]:
    with private_postgres(settings=SYNCHRONOUS) as primary, private_standby(primary) as standby:
        assert wait_for(
            lambda: primary.sql("SELECT sync_state FROM pg_stat_replication") == "sync",
            timeout_s=20,
            interval_s=0.2,
        )
        yield primary, standby
