"""Derived names and broker arguments of queues with a retry policy (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.errors import TopologyError
from outbox_relay.topology import (
    Binding,
    ExchangeSpec,
    InvalidTopologyError,
    QueueRole,
    QueueSpec,
    QueueType,
    RetryPolicy,
    Topology,
    parking_queue_name,
    parse_duration_ms,
    retry_queue_names,
)
from outbox_relay.topology.advice import (
    priority_warnings,
    supports_at_least_once,
    version_warnings,
)
from outbox_relay.topology.model import delay_label

BILLING = QueueSpec(
    "billing",
    type=QueueType.QUORUM,
    bindings=(Binding("orders", "order.*"),),
    retry=RetryPolicy(delays_ms=(1_000, 10_000, 60_000, 600_000), max_attempts=5),
)
SHIPPING = QueueSpec(
    "shipping", bindings=(Binding("orders", "order.*"),), retry=RetryPolicy((1_500,), 3)
)

policies = st.builds(
    RetryPolicy,
    delays_ms=st.lists(st.integers(1, 10**8), min_size=1, max_size=6, unique=True).map(tuple),
    max_attempts=st.integers(1, 20),
)


class TestNames:
    def test_retry_tiers_are_named_after_the_queue_and_the_delay(self) -> None:
        assert retry_queue_names(BILLING) == (
            "billing.retry.1s",
            "billing.retry.10s",
            "billing.retry.1m",
            "billing.retry.10m",
        )
        assert retry_queue_names(SHIPPING) == ("shipping.retry.1500ms",)

    def test_parking_lot_is_named_after_the_queue(self) -> None:
        assert parking_queue_name(BILLING) == "billing.parking"

    def test_a_queue_without_retry_policy_derives_nothing(self) -> None:
        plain = QueueSpec("audit")
        assert retry_queue_names(plain) == ()
        assert parking_queue_name(plain) is None
        assert plain.retry_queue_for(1) is None
        assert [d.name for d in plain.declarations()] == ["audit"]

    @pytest.mark.parametrize(
        ("delay_ms", "label"),
        [(1, "1ms"), (999, "999ms"), (1_000, "1s"), (90_000, "90s"), (120_000, "2m"),
         (3_600_000, "1h"), (5_400_000, "90m")],
    )  # fmt: skip
    def test_delay_labels_use_the_largest_unit_that_divides(
        self, delay_ms: int, label: str
    ) -> None:
        assert delay_label(delay_ms) == label

    @given(st.integers(1, 10**9))
    def test_a_label_reads_back_as_the_same_delay(self, delay_ms: int) -> None:
        assert parse_duration_ms(delay_label(delay_ms)) == delay_ms


class TestRetryRouting:
    def test_each_failed_attempt_goes_to_the_next_tier_then_the_parking_lot(self) -> None:
        assert [BILLING.retry_queue_for(n) for n in range(1, 6)] == [
            "billing.retry.1s",
            "billing.retry.10s",
            "billing.retry.1m",
            "billing.retry.10m",
            None,  # attempt 5 of 5 failed: park it
        ]

    def test_attempts_beyond_the_tiers_reuse_the_last_tier(self) -> None:
        queue = QueueSpec("q", retry=RetryPolicy((1_000, 5_000), max_attempts=6))
        assert [queue.retry_queue_for(n) for n in range(1, 7)] == [
            "q.retry.1s",
            *["q.retry.5s"] * 4,
            None,
        ]

    @given(policies, st.integers(1, 30))
    def test_a_retry_goes_to_one_of_its_tiers_until_attempts_run_out(
        self, policy: RetryPolicy, attempt: int
    ) -> None:
        queue = QueueSpec("q", retry=policy)
        target = queue.retry_queue_for(attempt)
        if attempt >= policy.max_attempts:
            assert target is None
        else:
            assert target in retry_queue_names(queue)

    def test_attempt_numbers_start_at_one(self) -> None:
        with pytest.raises(ValueError, match="start at 1"):
            BILLING.retry_queue_for(0)


class TestArguments:
    def test_quorum_main_queue_dead_letters_at_least_once_to_its_parking_lot(self) -> None:
        assert BILLING.main_arguments() == {
            "x-queue-type": "quorum",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "billing.parking",
            "x-delivery-limit": 5,
        }

    def test_classic_main_queue_has_no_strategy_and_no_delivery_limit(self) -> None:
        assert SHIPPING.main_arguments() == {
            "x-queue-type": "classic",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "shipping.parking",
        }

    def test_a_delay_tier_returns_through_the_default_exchange_to_its_own_queue(self) -> None:
        arguments = SHIPPING.delay_arguments(1_500)
        assert arguments["x-message-ttl"] == 1_500
        assert arguments["x-dead-letter-exchange"] == ""  # not the topic exchange
        assert arguments["x-dead-letter-routing-key"] == "shipping"

    def test_parking_lot_keeps_messages(self) -> None:
        assert BILLING.parking_arguments() == {"x-queue-type": "quorum"}

    def test_an_explicit_delivery_limit_wins(self) -> None:
        queue = QueueSpec("q", type=QueueType.QUORUM, delivery_limit=2)
        assert queue.main_arguments()["x-delivery-limit"] == 2

    def test_without_at_least_once_support_delay_tiers_are_classic(self) -> None:
        declared = {d.name: d for d in BILLING.declarations(at_least_once=False)}
        assert "x-dead-letter-strategy" not in declared["billing"].arguments
        assert declared["billing.retry.1s"].arguments["x-queue-type"] == "classic"

    @pytest.mark.parametrize(
        ("version", "warned"),
        [((3, 9, 29), True), ((3, 10, 0), False), ((4, 1), False), ((), False)],
    )
    def test_brokers_before_3_10_are_warned_about(
        self, version: tuple[int, ...], warned: bool
    ) -> None:
        warnings = version_warnings(Topology(queues=[BILLING, SHIPPING]), version)
        assert bool(warnings) is warned
        assert supports_at_least_once(version) is not warned
        if warned:
            assert (
                "RabbitMQ 3.9.29 is older than 3.10: quorum queues billing dead-letter"
                in (warnings[0])
            )

    def test_derived_queues_are_declared_before_the_main_queue(self) -> None:
        roles = [d.role for d in BILLING.declarations()]
        assert roles == [QueueRole.PARKING, *[QueueRole.DELAY] * 4, QueueRole.MAIN]

    def test_delivery_limit_needs_a_quorum_queue(self) -> None:
        with pytest.raises(TopologyError, match="delivery_limit needs type = 'quorum'"):
            QueueSpec("q", delivery_limit=3)


class TestValidation:
    @pytest.mark.parametrize(
        ("delays", "max_attempts", "message"),
        [
            ((), 3, "empty"),
            ((0,), 3, "not positive"),
            ((-5,), 3, "not positive"),
            ((1_000, 1_000), 3, "repeat"),
            ((1_000,), 0, "at least 1"),
        ],
    )
    def test_bad_retry_policies_are_refused(
        self, delays: tuple[int, ...], max_attempts: int, message: str
    ) -> None:
        with pytest.raises(TopologyError, match=message):
            RetryPolicy(delays, max_attempts)

    def test_a_queue_declared_twice_is_refused(self) -> None:
        with pytest.raises(InvalidTopologyError, match="'billing' is declared twice") as info:
            Topology(queues=[BILLING, BILLING])
        assert info.value.key == "queues[1].name"

    def test_a_queue_named_like_a_derived_queue_is_refused(self) -> None:
        with pytest.raises(InvalidTopologyError, match=r"'billing\.parking'"):
            Topology(queues=[BILLING, QueueSpec("billing.parking")])

    def test_an_exchange_declared_twice_is_refused(self) -> None:
        with pytest.raises(InvalidTopologyError, match="exchange 'orders' is declared twice"):
            Topology(exchanges=[ExchangeSpec("orders"), ExchangeSpec("orders", type="direct")])

    @pytest.mark.parametrize("name", ["", "  ", "amq.mine", "x" * 256])
    def test_unusable_names_are_refused(self, name: str) -> None:
        with pytest.raises(TopologyError, match="name"):
            QueueSpec(name)

    def test_binding_to_the_default_exchange_is_refused(self) -> None:
        with pytest.raises(TopologyError, match="default exchange"):
            Binding("")

    def test_exchange_types_are_checked(self) -> None:
        with pytest.raises(TopologyError, match="use one of topic"):
            ExchangeSpec("x", type="x-delayed-message")

    def test_undeclared_exchanges_are_listed_with_their_keys(self) -> None:
        topology = Topology(
            exchanges=[ExchangeSpec("orders", alternate_exchange="lost")],
            queues=[BILLING, QueueSpec("audit", bindings=(Binding("payments"),))],
        )
        assert topology.undeclared_references() == (
            ("queues[1].bindings[0].exchange", "payments"),
            ("exchanges[0].alternate_exchange", "lost"),
        )


class TestMaxPriority:
    def test_a_priority_queue_declares_x_max_priority_on_the_main_queue_only(self) -> None:
        queue = QueueSpec("jobs", retry=RetryPolicy((1_000,), 3), max_priority=10)
        arguments = {d.name: dict(d.arguments) for d in queue.declarations()}
        assert arguments["jobs"]["x-max-priority"] == 10
        assert "x-max-priority" not in arguments["jobs.retry.1s"]
        assert "x-max-priority" not in arguments["jobs.parking"]

    def test_without_max_priority_there_is_no_argument(self) -> None:
        assert "x-max-priority" not in QueueSpec("jobs").main_arguments()

    @pytest.mark.parametrize("value", [0, -1, 256, 1000])
    def test_out_of_range_is_refused_with_the_range(self, value: int) -> None:
        with pytest.raises(TopologyError, match=r"max_priority is .*, it must be 1 to 255"):
            QueueSpec("jobs", max_priority=value)

    @given(st.integers(1, 255))
    def test_every_value_in_range_is_declared_as_is(self, value: int) -> None:
        assert QueueSpec("jobs", max_priority=value).main_arguments()["x-max-priority"] == value

    def test_quorum_queues_take_no_max_priority(self) -> None:
        with pytest.raises(TopologyError, match="max_priority needs type = 'classic'"):
            QueueSpec("jobs", type=QueueType.QUORUM, max_priority=5)

    def test_more_levels_than_recommended_is_a_warning(self) -> None:
        topology = Topology(
            queues=[QueueSpec("few", max_priority=10), QueueSpec("many", max_priority=200)]
        )
        (warning,) = priority_warnings(topology)
        assert "queue 'many': max_priority = 200 is above the 10 RabbitMQ recommends" in warning
