"""Dead-peer timings: one timeout, the same TCP settings for pika and libpq."""

from __future__ import annotations

import pytest

from outbox_relay.amqp_url import AMQP_HEARTBEAT_S, url_parameters
from outbox_relay.dead_peer import DeadPeerTimings
from outbox_relay.errors import ConfigurationError
from outbox_relay.relay import RelaySettings
from outbox_relay.settings import RunSettings
from outbox_relay.store.connect import dead_peer_parameters


@pytest.mark.parametrize(
    ("timeout_s", "idle", "interval"), [(1, 1, 1), (3, 1, 1), (8, 4, 1), (30, 15, 5), (60, 30, 10)]
)
def test_probes_start_at_half_the_timeout_and_end_within_it(
    timeout_s: float, idle: int, interval: int
) -> None:
    timings = DeadPeerTimings.for_timeout(timeout_s)
    assert timings == DeadPeerTimings(idle, interval, 3, round(timeout_s * 1000))
    if timeout_s >= 8:
        assert idle + 3 * interval <= timeout_s


def test_zero_leaves_the_operating_systems_defaults() -> None:
    assert DeadPeerTimings.for_timeout(0) is None
    assert url_parameters("amqp://h/%2F").tcp_options is None
    assert dead_peer_parameters("postgresql://h/db", 0) == {}


def test_pika_gets_keepalives_and_a_user_timeout_unless_the_url_sets_its_own() -> None:
    params = url_parameters("amqp://h/%2F", dead_peer_timeout_s=8)
    assert params.tcp_options == {
        "TCP_KEEPIDLE": 4,
        "TCP_KEEPINTVL": 1,
        "TCP_KEEPCNT": 3,
        "TCP_USER_TIMEOUT": 8000,
    }
    own = url_parameters("amqp://h/%2F?tcp_options={'TCP_KEEPIDLE':60}", dead_peer_timeout_s=8)
    assert own.tcp_options == {"TCP_KEEPIDLE": 60}


def test_libpq_gets_the_same_unless_the_url_sets_a_parameter_itself() -> None:
    assert dead_peer_parameters("postgresql://h/db", 8) == {
        "keepalives": 1,
        "keepalives_idle": 4,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": 8000,
    }
    given = dead_peer_parameters("postgresql://h/db?keepalives_idle=60&tcp_user_timeout=0", 8)
    assert "keepalives_idle" not in given
    assert "tcp_user_timeout" not in given
    assert given["keepalives_count"] == 3


@pytest.mark.parametrize("timeout_s", [-1, 0.5])
def test_a_timeout_under_a_second_is_refused(timeout_s: float) -> None:
    with pytest.raises(ConfigurationError, match="--dead-peer-timeout must be 0"):
        RunSettings(
            database_url="postgresql://h/db",
            amqp_url="amqp://h/%2F",
            schema="public",
            relay=RelaySettings(),
            confirm_timeout_s=30,
            dead_peer_timeout_s=timeout_s,
        )


def test_the_amqp_heartbeat_is_negotiated_to_ten_seconds_unless_the_url_sets_one() -> None:
    assert url_parameters("amqp://h/%2F").heartbeat == AMQP_HEARTBEAT_S == 10
    assert url_parameters("amqp://h/%2F?heartbeat=30").heartbeat == 30
    assert url_parameters("amqp://h/%2F?heartbeat=0").heartbeat == 0  # off, as asked


@pytest.mark.parametrize("timeout_s", [-1, 0.5])
def test_a_db_timeout_under_a_second_is_refused(timeout_s: float) -> None:
    with pytest.raises(ConfigurationError, match="--db-timeout must be 0"):
        RunSettings(
            database_url="postgresql://h/db",
            amqp_url="amqp://h/%2F",
            schema="public",
            relay=RelaySettings(),
            confirm_timeout_s=30,
            dead_peer_timeout_s=8,
            db_timeout_s=timeout_s,
        )
