"""Which row a channel close is blamed on."""

from __future__ import annotations

import dataclasses

import pytest

from outbox_relay.relay.outcome import (
    Reason,
    Status,
    blame_access_refused,
    blame_channel_close,
    refused_by_broker,
    unroutable,
)
from tests.support.rows import sized_row as row

TOO_LARGE = "PRECONDITION_FAILED - message size 5000 is larger than configured max size 2048"


class TestBlameChannelClose:
    def test_a_message_over_max_size_is_found_by_its_size(self) -> None:
        rows = [row(1, 10), row(2, 5000), row(3, 20)]
        blamed = blame_channel_close(406, TOO_LARGE, rows)
        assert blamed is not None
        culprit, outcome = blamed
        assert culprit.id == 2
        assert outcome.status is Status.FAILED
        assert outcome.reason is Reason.TOO_LARGE
        assert outcome.error is not None
        assert "5000 bytes" in outcome.error
        assert "2048" in outcome.error

    def test_the_hard_limit_is_worded_without_configured(self) -> None:
        text = "PRECONDITION_FAILED - message size 5000 is larger than max size 4096"
        blamed = blame_channel_close(406, text, [row(1, 5000)])
        assert blamed is not None
        assert blamed[0].id == 1

    def test_no_row_of_that_size_or_another_reply_blames_nobody(self) -> None:
        rows = [row(1, 10), row(2, 20)]
        assert blame_channel_close(406, TOO_LARGE, rows) is None
        assert blame_channel_close(406, "PRECONDITION_FAILED - other", [row(1, 5000)]) is None
        assert blame_channel_close(404, TOO_LARGE, [row(1, 5000)]) is None
        assert blame_channel_close(None, "", [row(1, 5000)]) is None


class TestRefusedByBroker:
    @pytest.mark.parametrize("code", [501, 502, 503, 504, 505, 530, 540])
    def test_hard_errors_over_what_was_sent_are_refusals(self, code: int) -> None:
        assert refused_by_broker(code)

    @pytest.mark.parametrize("code", [None, 200, 320, 404, 406, 506, 541])
    def test_the_brokers_own_closes_are_not(self, code: int | None) -> None:
        assert not refused_by_broker(code)

    def test_a_refused_row_is_dead_at_once(self) -> None:
        assert Reason.BROKER_REFUSED.permanent
        assert not Reason.CHANNEL_CLOSED.permanent


ACCESS_REFUSED = "ACCESS_REFUSED - access to exchange 'audit' in vhost '/' refused for user 'relay'"


class TestBlameAccessRefused:
    def test_every_unconfirmed_row_to_the_refused_exchange_fails(self) -> None:
        rows = [row(1, 10), dataclasses.replace(row(2, 10), exchange="audit"), row(3, 10)]
        rows.append(dataclasses.replace(row(4, 10), exchange="audit"))
        blamed = blame_access_refused(403, ACCESS_REFUSED, rows)
        assert set(blamed) == {2, 4}
        outcome = blamed[2]
        assert outcome.status is Status.FAILED
        assert outcome.reason is Reason.CHANNEL_CLOSED, "permissions may be granted: retried"
        assert outcome.error is not None
        assert "'audit'" in outcome.error
        assert "permission" in outcome.error

    def test_the_default_exchange_is_named_amq_default_in_the_refusal(self) -> None:
        rows = [dataclasses.replace(row(1, 10), exchange=""), row(2, 10)]
        refused = ACCESS_REFUSED.replace("'audit'", "'amq.default'")
        assert set(blame_access_refused(403, refused, rows)) == {1}

    def test_another_reply_blames_nobody(self) -> None:
        rows = [dataclasses.replace(row(1, 10), exchange="audit")]
        assert blame_access_refused(406, ACCESS_REFUSED, rows) == {}
        assert blame_access_refused(403, "ACCESS_REFUSED - something else", rows) == {}


class TestUnroutable:
    def test_names_the_exchange_and_routing_key(self) -> None:
        error = unroutable("orders", "order.created", "312 NO_ROUTE")
        assert "exchange 'orders'" in error
        assert "'order.created'" in error
        assert "312 NO_ROUTE" in error

    def test_through_the_default_exchange_names_the_missing_queue(self) -> None:
        error = unroutable("", "invoices", "312 NO_ROUTE")
        assert "no queue named 'invoices'" in error
        assert "default exchange" in error
