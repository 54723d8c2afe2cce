"""A handler's payload parameter: the message body decoded and validated as its type.

The validator is built once, when the handler is registered, and only then imports the
library it needs: pydantic models validate themselves, msgspec Structs through
``msgspec.convert``; dataclasses and TypedDicts through pydantic's ``TypeAdapter`` when
pydantic is installed, else through msgspec (``pip install 'outbox-relay[pydantic]'`` or
``'outbox-relay[msgspec]'``). A body that does not fit raises
:class:`~outbox_relay.consumer.errors.InvalidPayloadError`: the message is parked at once
with the validation error; no retry can fix it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable
from typing import Any

from outbox_relay.consumer.errors import InvalidPayloadError
from outbox_relay.consumer.message import Message, is_json
from outbox_relay.consumer.signature import PayloadKind
from outbox_relay.errors import ConfigurationError

Validator = Callable[[Any], object]


def validator_for(tp: type, kind: PayloadKind, *, where: str) -> Validator:
    """The function that turns a decoded JSON value into a ``tp``; ConfigurationError
    naming the extra to install when no library can validate ``tp``."""
    if kind is PayloadKind.PYDANTIC:
        validate: Validator = tp.model_validate  # type: ignore[attr-defined]
        return validate
    if kind is not PayloadKind.MSGSPEC and _installed("pydantic"):
        pydantic = importlib.import_module("pydantic")
        try:
            return pydantic.TypeAdapter(tp).validate_python  # type: ignore[no-any-return]
        except pydantic.PydanticUserError as exc:
            # e.g. typing.TypedDict before Python 3.12, which msgspec does take
            if not _installed("msgspec"):
                raise ConfigurationError(
                    f"{where}: pydantic cannot validate {tp.__qualname__}: {exc}"
                ) from exc
    if not _installed("msgspec"):
        raise ConfigurationError(
            f"{where}: validating a {kind.value} payload ({tp.__qualname__}) needs pydantic "
            "or msgspec: pip install 'outbox-relay[pydantic]' (or '[msgspec]')"
        )
    msgspec = importlib.import_module("msgspec")

    def convert(value: Any) -> object:
        return msgspec.convert(value, tp)

    return convert


def decode_payload(message: Message, tp: type, validate: Validator, *, where: str) -> object:
    """``message``'s body as a ``tp``; InvalidPayloadError saying why it does not fit."""
    body = message.body
    if isinstance(body, bytes):
        if message.content_type and not is_json(message.content_type):
            raise InvalidPayloadError(
                f"{where} takes a {tp.__qualname__} decoded from JSON, but the message's "
                f"content type is {message.content_type!r}; publish it as JSON, or take "
                "the raw bytes as message.raw_body"
            )
        try:  # no content type: JSON is the usual meaning
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise InvalidPayloadError(
                f"{where} takes a {tp.__qualname__}, but the body (no content type) is not "
                f"JSON: {exc}"
            ) from exc
    try:
        return validate(body)
    except (ValueError, TypeError) as exc:  # pydantic's and msgspec's errors are ValueErrors
        raise InvalidPayloadError(
            f"the body does not fit {tp.__qualname__}, the payload of {where}: {exc}"
        ) from exc


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
