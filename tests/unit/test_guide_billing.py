"""The consumer guide's unit test (docs/consumer.md): a handler without a transaction,
run with no broker and no database."""

from __future__ import annotations

from outbox_relay.consumer.testing import Action, make_message, run
from tests.support.guide_billing import SENT, InvoiceCreated, mail_invoice


def test_an_invoice_is_mailed_once_per_message() -> None:
    outcome = run(mail_invoice, {"invoice_id": 1, "order_id": 7, "email": "a@example.com"})
    assert outcome.action is Action.ACK
    assert SENT[-1]["to"] == "a@example.com"
    assert SENT[-1]["idempotency_key"] == outcome.message.message_id  # type: ignore[union-attr]


def test_an_invoice_event_without_an_email_is_parked_not_retried() -> None:
    outcome = run(mail_invoice, {"invoice_id": 1, "order_id": 7})
    assert outcome.action is Action.PARK
    assert outcome.next_queue == "billing.mailer.parking"
    assert "email" in outcome.reason


def test_the_handler_is_still_a_function() -> None:
    mail_invoice(InvoiceCreated(2, 8, "b@example.com"), make_message())
    assert SENT[-1]["subject"] == "Invoice 2 for order 8"
