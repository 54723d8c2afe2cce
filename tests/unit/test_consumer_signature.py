"""What a handler's signature asks for: by annotation first, then by name; anything else
is refused when the handler is registered."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Optional, TypedDict

import msgspec
import psycopg
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from outbox_relay.consumer import ConsumerApp, Message
from outbox_relay.consumer.errors import InvalidPayloadError
from outbox_relay.consumer.payload import decode_payload, validator_for
from outbox_relay.consumer.signature import PayloadKind, Role, plan_call
from outbox_relay.errors import ConfigurationError


class OrderModel(pydantic.BaseModel):
    order_id: int
    total: float


@dataclasses.dataclass
class OrderData:
    order_id: int
    total: float


class OrderDict(TypedDict):
    order_id: int
    total: float


class OrderStruct(msgspec.Struct):
    order_id: int
    total: float


PAYLOAD_TYPES = [
    (OrderModel, PayloadKind.PYDANTIC),
    (OrderData, PayloadKind.DATACLASS),
    (OrderDict, PayloadKind.TYPEDDICT),
    (OrderStruct, PayloadKind.MSGSPEC),
]


def roles(func: Any) -> dict[str, Role]:
    return {a.name: a.role for a in plan_call(func).arguments}


class TestRoles:
    def test_the_names_message_and_tx_need_no_annotation(self) -> None:
        assert roles(lambda message, tx: None) == {"message": Role.MESSAGE, "tx": Role.TX}
        assert not plan_call(lambda message: None).uses_db

    def test_a_keyword_only_or_defaulted_tx_gets_the_transaction(self) -> None:
        def keyword(message: Message, *, tx: Any) -> None: ...

        def defaulted(message: Message, tx: Any = None) -> None: ...

        assert plan_call(keyword).uses_db
        assert plan_call(defaulted).uses_db
        assert [a.keyword for a in plan_call(keyword).arguments] == [False, True]

    def test_annotations_decide_whatever_the_names(self) -> None:
        def handler(
            msg: Message,
            conn: psycopg.Connection[tuple[Any, ...]],
            db: Session,
            order: OrderModel,
        ) -> None: ...

        plan = plan_call(handler)
        assert roles(handler) == {
            "msg": Role.MESSAGE,
            "conn": Role.TX,
            "db": Role.SESSION,
            "order": Role.PAYLOAD,
        }
        assert (plan.payload_type, plan.payload_kind, plan.uses_db) == (
            OrderModel,
            PayloadKind.PYDANTIC,
            True,
        )

    def test_optional_annotations_count_as_their_type(self) -> None:
        def handler(m: Optional[Message], c: psycopg.Connection[Any] | None = None) -> None: ...  # noqa: UP045 - both spellings

        assert roles(handler) == {"m": Role.MESSAGE, "c": Role.TX}

        def typed(order: OrderModel | None) -> None: ...

        assert plan_call(typed).payload_type is OrderModel

    @pytest.mark.parametrize(("tp", "kind"), PAYLOAD_TYPES)
    def test_each_payload_kind_is_recognised(self, tp: type, kind: PayloadKind) -> None:
        def handler(body: Any) -> None: ...

        handler.__annotations__ = {"body": tp}
        assert plan_call(handler).payload_kind is kind

    def test_a_handler_without_parameters_needs_nothing(self) -> None:
        assert plan_call(lambda: None).arguments == ()


class TestRefusals:
    def test_two_payloads_are_ambiguous(self) -> None:
        def handler(a: OrderModel, b: OrderData) -> None: ...

        with pytest.raises(ConfigurationError, match="'a' and 'b' both ask for the payload"):
            plan_call(handler)

    def test_two_transactions_are_ambiguous(self) -> None:
        def handler(tx: Any, conn: psycopg.Connection[Any]) -> None: ...

        with pytest.raises(
            ConfigurationError, match="'tx' and 'conn' both ask for the transaction"
        ):
            plan_call(handler)

    def test_an_unknown_annotation_on_an_unknown_name_names_both(self) -> None:
        def on_order(message: Message, order: dict[str, Any]) -> None: ...

        with pytest.raises(
            ConfigurationError,
            match=r"handler .*on_order: parameter 'order' \(annotated dict\[str, typing.Any\]\) "
            r"is unknown; name it `message`",
        ):
            plan_call(on_order)

    def test_an_annotation_that_does_not_resolve_says_where_to_import_it(self) -> None:
        def on_order(order: NoSuchModel) -> None: ...  # type: ignore[name-defined]  # noqa: F821

        with pytest.raises(
            ConfigurationError, match="'NoSuchModel' of parameter 'order' does not resolve"
        ):
            plan_call(on_order)

    def test_an_unresolvable_annotation_on_message_or_tx_falls_back_to_the_name(self) -> None:
        def handler(message: NoSuchType, tx: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

        assert roles(handler) == {"message": Role.MESSAGE, "tx": Role.TX}

    def test_an_async_connection_is_refused(self) -> None:
        def handler(tx: psycopg.AsyncConnection[Any]) -> None: ...

        with pytest.raises(ConfigurationError, match=r"parameter 'tx': psycopg\.AsyncConnection"):
            plan_call(handler)


def test_a_model_defined_beside_the_handler_resolves() -> None:
    class Local(pydantic.BaseModel):
        n: int

    app = ConsumerApp(name="x")

    @app.handler(exchange="e", queue="q")
    def on_local(payload: Local) -> None: ...

    assert on_local.plan.payload_type is Local


ROLE_VALUES = {Role.MESSAGE: "the message", Role.TX: "the tx", Role.SESSION: "the session"}
ANNOTATIONS: dict[Role, list[object]] = {
    Role.MESSAGE: [Message, inspect.Parameter.empty],
    Role.TX: [psycopg.Connection, inspect.Parameter.empty],
    Role.SESSION: [Session],
}
NAMES = {Role.MESSAGE: "message", Role.TX: "tx"}


@st.composite
def signatures(draw: st.DrawFn) -> tuple[inspect.Signature, dict[str, Role]]:
    """Some of the roles in any order, each annotated or only named, the later ones
    keyword-only."""
    order = draw(st.permutations(list(ROLE_VALUES)))
    chosen = order[: draw(st.integers(0, len(order)))]
    keyword_from = draw(st.integers(0, len(chosen)))
    parameters, expected = [], {}
    for index, role in enumerate(chosen):
        annotation = draw(st.sampled_from(ANNOTATIONS[role]))
        name = NAMES[role] if annotation is inspect.Parameter.empty else f"p{index}"
        kind = (
            inspect.Parameter.KEYWORD_ONLY
            if index >= keyword_from
            else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        parameters.append(inspect.Parameter(name, kind, annotation=annotation))
        expected[name] = role
    return inspect.Signature(parameters), expected


@given(signatures())
def test_every_parameter_receives_the_value_of_its_role(
    drawn: tuple[inspect.Signature, dict[str, Role]],
) -> None:
    signature, expected = drawn

    def handler(*args: Any, **kwargs: Any) -> None: ...

    handler.__signature__ = signature  # type: ignore[attr-defined]
    plan = plan_call(handler)
    args, kwargs = plan.call_arguments(ROLE_VALUES)
    bound = signature.bind(*args, **kwargs)
    assert bound.arguments == {name: ROLE_VALUES[role] for name, role in expected.items()}
    assert plan.uses_db == any(r in (Role.TX, Role.SESSION) for r in expected.values())


def message(
    body: Any, *, content_type: str | None = "application/json", raw: bytes = b""
) -> Message:
    return Message(
        body=body,
        raw_body=raw,
        message_id="m-1",
        routing_key="order.created",
        exchange="orders",
        queue="q",
        content_type=content_type,
    )


class TestPayloads:
    @pytest.mark.parametrize(("tp", "kind"), PAYLOAD_TYPES)
    def test_a_fitting_body_becomes_the_type(self, tp: type, kind: PayloadKind) -> None:
        validate = validator_for(tp, kind, where="handler h")
        got = decode_payload(
            message({"order_id": 7, "total": 9.5}), tp, validate, where="handler h"
        )
        expected = {"order_id": 7, "total": 9.5}
        assert (
            got if isinstance(got, dict) else {k: getattr(got, k) for k in expected}
        ) == expected
        if tp is not OrderDict:
            assert isinstance(got, tp)

    @pytest.mark.parametrize(("tp", "kind"), PAYLOAD_TYPES)
    def test_a_body_that_does_not_fit_says_which_field(self, tp: type, kind: PayloadKind) -> None:
        validate = validator_for(tp, kind, where="handler h")
        with pytest.raises(
            InvalidPayloadError, match=rf"(?s)does not fit {tp.__name__}.*order_id"
        ) as caught:
            decode_payload(
                message({"order_id": "seven", "total": 1}), tp, validate, where="handler h"
            )
        assert isinstance(caught.value.__cause__, ValueError)

    def test_a_body_without_a_content_type_is_read_as_json(self) -> None:
        validate = validator_for(OrderModel, PayloadKind.PYDANTIC, where="h")
        raw = b'{"order_id": 1, "total": 2}'
        got = decode_payload(
            message(raw, content_type=None, raw=raw), OrderModel, validate, where="h"
        )
        assert got == OrderModel(order_id=1, total=2)

    def test_a_body_of_another_content_type_is_refused_with_the_way_out(self) -> None:
        validate = validator_for(OrderModel, PayloadKind.PYDANTIC, where="h")
        with pytest.raises(InvalidPayloadError, match=r"content type is 'text/plain'.*raw_body"):
            decode_payload(
                message(b"x", content_type="text/plain"), OrderModel, validate, where="h"
            )
