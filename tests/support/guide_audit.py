"""The consumer guide's SQLAlchemy example (docs/consumer.md): a handler whose Session
shares the inbox row's transaction. tests/integration/test_guide_audit.py runs it."""

from __future__ import annotations

from sqlalchemy import JSON
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import outbox_relay
from outbox_relay.consumer import ConsumerApp, Message

app = ConsumerApp(name="audit", schema="audit")


class Base(DeclarativeBase):
    pass


class AuditEntry(Base):
    __tablename__ = "entries"
    __table_args__ = {"schema": "audit"}  # noqa: RUF012 - SQLAlchemy's declarative form

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str]
    routing_key: Mapped[str]
    body: Mapped[dict[str, object]] = mapped_column(JSON)


@app.handler(exchange="orders", queue="audit.orders", bindings=["order.#"])
def audit_order(message: Message, session: Session) -> None:
    assert message.message_id is not None
    session.add(
        AuditEntry(
            message_id=message.message_id, routing_key=message.routing_key, body=message.body
        )
    )
    session.flush()
    outbox_relay.publish(
        session, exchange="audit", routing_key="entry.recorded", payload={}, schema="audit"
    )
