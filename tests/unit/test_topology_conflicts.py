"""PRECONDITION_FAILED texts as RabbitMQ 3.10 writes them, parsed and explained (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.topology import (
    Action,
    ApplyReport,
    Plan,
    PlanItem,
    TopologyPartlyAppliedError,
    parse_precondition_failed,
)
from outbox_relay.topology.conflicts import (
    BrokerValue,
    CannotAdoptError,
    Inequivalence,
    adopt_current,
    explain,
)

# Verbatim from RabbitMQ 3.10.8 (pika's ChannelClosedByBroker.reply_text).
TYPED_VS_NONE = (
    "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': "
    "received the value 'quorum' of type 'longstr' but current is none"
)
NONE_VS_TYPED = (
    "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'p2' in vhost '/': "
    "received none but current is the value '1000' of type 'signedint'"
)
PLAIN = (
    "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'p3' in vhost '/': "
    "received '5' but current is '3'"
)
DURABLE = (
    "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'probe_q' in vhost '/': "
    "received 'false' but current is 'true'"
)
EXCHANGE_TYPE = (
    "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'probe_x' in vhost 'shop': "
    "received 'direct' but current is 'topic'"
)


class TestParse:
    def test_typed_value_against_absent(self) -> None:
        parsed = parse_precondition_failed(TYPED_VS_NONE)
        assert parsed == Inequivalence(
            kind="queue",
            name="q",
            vhost="/",
            argument="x-queue-type",
            received=BrokerValue("quorum", "longstr"),
            current=BrokerValue(None),
        )

    def test_absent_against_typed_value(self) -> None:
        parsed = parse_precondition_failed(NONE_VS_TYPED)
        assert parsed is not None
        assert (parsed.argument, parsed.received, parsed.current) == (
            "x-message-ttl",
            BrokerValue(None),
            BrokerValue("1000", "signedint"),
        )

    def test_plain_values(self) -> None:
        parsed = parse_precondition_failed(PLAIN)
        assert parsed is not None
        assert (parsed.received.text, parsed.current.text) == ("5", "3")

    def test_exchange(self) -> None:
        parsed = parse_precondition_failed(EXCHANGE_TYPE)
        assert parsed is not None
        assert (parsed.kind, parsed.name, parsed.vhost, parsed.argument) == (
            "exchange",
            "probe_x",
            "shop",
            "type",
        )

    @pytest.mark.parametrize(
        "text",
        [
            "NOT_FOUND - no queue 'q' in vhost '/'",
            "PRECONDITION_FAILED - queue 'q' in vhost '/' in use",
            "",
        ],
    )
    def test_other_refusals_are_not_inequivalences(self, text: str) -> None:
        assert parse_precondition_failed(text) is None

    @given(
        name=st.text(st.characters(codec="utf-8", exclude_characters="\n"), min_size=1),
        argument=st.from_regex(r"x-[a-z-]{1,20}", fullmatch=True),
        received=st.one_of(st.none(), st.text(st.characters(exclude_characters="'\n"))),
        current=st.one_of(st.none(), st.text(st.characters(exclude_characters="'\n"))),
    )
    def test_any_name_and_values_read_back(
        self, name: str, argument: str, received: str | None, current: str | None
    ) -> None:
        def show(value: str | None) -> str:
            return "none" if value is None else f"the value '{value}' of type 'longstr'"

        text = (
            f"PRECONDITION_FAILED - inequivalent arg '{argument}' for queue '{name}' in vhost "
            f"'/': received {show(received)} but current is {show(current)}"
        )
        parsed = parse_precondition_failed(text)
        assert parsed is not None
        assert (parsed.name, parsed.argument) == (name, argument)
        assert (parsed.received.text, parsed.current.text) == (received, current)


def _parsed(text: str) -> Inequivalence:
    parsed = parse_precondition_failed(text)
    assert parsed is not None
    return parsed


class TestAdopt:
    def test_an_absent_argument_is_dropped(self) -> None:
        request = {"durable": True, "x-queue-type": "quorum", "x-delivery-limit": 3}
        assert adopt_current(request, _parsed(TYPED_VS_NONE)) == {
            "durable": True,
            "x-delivery-limit": 3,
        }

    def test_a_typed_integer_is_read_back_as_an_integer(self) -> None:
        assert adopt_current({"durable": True}, _parsed(NONE_VS_TYPED)) == {
            "durable": True,
            "x-message-ttl": 1000,
        }

    def test_a_plain_value_takes_the_requested_type(self) -> None:
        assert adopt_current({"x-delivery-limit": 5}, _parsed(PLAIN)) == {"x-delivery-limit": 3}
        assert adopt_current({"durable": False}, _parsed(DURABLE)) == {"durable": True}
        assert adopt_current({"type": "direct"}, _parsed(EXCHANGE_TYPE)) == {"type": "topic"}

    def test_unreadable_values_are_refused(self) -> None:
        odd = NONE_VS_TYPED.replace("'1000' of type 'signedint'", "'1.5' of type 'double'")
        with pytest.raises(CannotAdoptError):
            adopt_current({}, _parsed(odd))


class TestExplain:
    def test_names_object_argument_both_values_and_the_way_out(self) -> None:
        text = explain(
            "queue",
            "billing",
            (_parsed(NONE_VS_TYPED), _parsed(TYPED_VS_NONE)),
            vhost="/",
            messages=0,
        )
        lines = text.splitlines()
        assert lines[0] == "queue 'billing' on vhost '/' already exists with other arguments:"
        # the queue type first: it decides the way out
        assert lines[1] == "  - x-queue-type: exists as (not set), the topology asks for 'quorum'"
        assert lines[2] == "  - x-message-ttl: exists as '1000', the topology asks for (not set)"
        assert "give the queue a new name" in text
        assert "it is empty: stop its consumers, delete it" in text
        assert "rabbitmqctl delete_queue -p '/' 'billing'" in text
        assert "set_policy" not in text  # a policy cannot change the queue type

    def test_policy_settable_differences_offer_a_policy(self) -> None:
        text = explain("queue", "p3", (_parsed(PLAIN),), vhost="/", messages=12)
        assert "set_policy -p '/' NAME '^p3$' '{\"delivery-limit\": ...}' --apply-to queues" in text
        assert "it holds 12 messages: drain it first" in text

    def test_an_exchange_can_be_deleted_without_losing_messages(self) -> None:
        text = explain("exchange", "probe_x", (_parsed(EXCHANGE_TYPE),), vhost="shop")
        assert "exists as 'topic', the topology asks for 'direct'" in text
        assert "rabbitmqadmin -V 'shop' delete exchange name='probe_x'" in text

    def test_an_unparsed_refusal_is_quoted(self) -> None:
        text = explain("queue", "q", (), vhost="/", broker_text="403 ACCESS_REFUSED - nope")
        assert "RabbitMQ said: 403 ACCESS_REFUSED - nope" in text


class TestRendering:
    def test_a_plan_lists_every_item_and_explains_conflicts(self) -> None:
        plan = Plan(
            vhost="/",
            items=(
                PlanItem("exchange", "orders", Action.MATCHES),
                PlanItem(
                    "queue", "billing.parking", Action.CREATE, note="parking lot of 'billing'"
                ),
                PlanItem("queue", "billing", Action.CONFLICT, note="first line\nsecond line"),
                PlanItem(
                    "binding",
                    "billing",
                    Action.BIND,
                    {"exchange": "orders", "queue": "billing", "routing_key": "order.*"},
                ),
            ),
        )
        assert not plan.ok
        assert plan.render().splitlines() == [
            "vhost '/':",
            "  matches   exchange 'orders'",
            "  create    queue 'billing.parking' (parking lot of 'billing')",
            "  conflict  queue 'billing'",
            "            first line",
            "            second line",
            "  bind      binding 'orders' -> 'billing' [order.*]",
            "1 to create, 1 already match, 1 in conflict, 1 bindings (declared on every apply)",
        ]

    def test_an_apply_with_nothing_created_is_up_to_date(self) -> None:
        matched = (PlanItem("exchange", "orders", Action.MATCHES),)
        report = ApplyReport(vhost="/", created=(), matched=matched, bindings=())
        assert report.up_to_date
        assert "vhost '/' is up to date: 1 exchanges and queues already match" in report.render()


class TestPartlyApplied:
    def test_says_what_was_applied_and_what_not(self) -> None:
        done = (PlanItem("exchange", "orders", Action.CREATE),)
        left = (PlanItem("queue", "billing", Action.CREATE),)
        error = TopologyPartlyAppliedError(
            "RabbitMQ refused queue 'billing': 403", applied=done, not_applied=left
        )
        assert str(error).splitlines() == [
            "RabbitMQ refused queue 'billing': 403",
            "the topology is partly applied; applied:",
            "  exchange 'orders'",
            "not applied:",
            "  queue 'billing'",
            "fix the cause and apply again (applying is idempotent)",
        ]
