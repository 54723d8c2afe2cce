"""What a handler asks for, read from its parameters' names and annotations. Pure: no I/O.

Each parameter is one of:

* the message: annotated with :class:`~outbox_relay.consumer.Message`, or named ``message``;
* the transaction: annotated with ``psycopg.Connection`` (``psycopg.AsyncConnection`` in
  an ``async def`` handler), or named ``tx``; asking for it runs the handler inside the
  inbox transaction;
* a SQLAlchemy session bound to that same transaction: annotated ``sqlalchemy.orm.Session``
  (``sqlalchemy.ext.asyncio.AsyncSession`` in an ``async def`` handler);
* the payload: annotated with a pydantic model, a dataclass, a ``TypedDict`` or a msgspec
  ``Struct``; it receives the body decoded and validated as that type (at most one).

An annotation the SDK knows decides; otherwise the name does. A handler is a plain
function or an ``async def`` one (see :mod:`outbox_relay.consumer.aio`); a connection or
session of the other kind is refused, naming the one to use. Anything else is refused
when the handler is registered, naming the parameter and the fix. Nothing here imports
pydantic, msgspec, psycopg or SQLAlchemy: a class can only be one of theirs when its
library is already loaded, so :data:`sys.modules` answers.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from outbox_relay.consumer.message import Message
from outbox_relay.errors import ConfigurationError

MESSAGE_NAME = "message"
TX_NAME = "tx"
FIX = (
    "name it `message` (the Message) or `tx` (the transaction), or annotate it with "
    "outbox_relay.consumer.Message, psycopg.Connection (psycopg.AsyncConnection in an "
    "async def handler), sqlalchemy.orm.Session (sqlalchemy.ext.asyncio.AsyncSession), or "
    "one payload type (a pydantic model, a dataclass, a TypedDict or a msgspec Struct)"
)


class Role(enum.Enum):
    """What the SDK passes to a parameter."""

    MESSAGE = "message"
    TX = "transaction"
    SESSION = "SQLAlchemy session"
    PAYLOAD = "payload"


class PayloadKind(enum.Enum):
    PYDANTIC = "pydantic model"
    MSGSPEC = "msgspec Struct"
    DATACLASS = "dataclass"
    TYPEDDICT = "TypedDict"


@dataclass(frozen=True)
class Argument:
    """One parameter and what it receives; ``keyword`` when it must be passed by name."""

    name: str
    role: Role
    keyword: bool


@dataclass(frozen=True)
class CallPlan:
    """How to call a handler: its arguments in order, and the payload type if any."""

    arguments: tuple[Argument, ...]
    payload_type: type | None = None
    payload_kind: PayloadKind | None = None
    is_async: bool = False  # an ``async def`` handler: it runs on its worker's event loop

    @property
    def uses_db(self) -> bool:
        """The handler runs in the inbox transaction (it takes ``tx`` or a Session)."""
        return any(a.role in (Role.TX, Role.SESSION) for a in self.arguments)

    @property
    def wants_session(self) -> bool:
        return any(a.role is Role.SESSION for a in self.arguments)

    def call_arguments(self, values: Mapping[Role, object]) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments from the value of each role."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for argument in self.arguments:
            if argument.keyword:
                kwargs[argument.name] = values[argument.role]
            else:
                args.append(values[argument.role])
        return args, kwargs


def plan_call(func: Callable[..., object], *, localns: Mapping[str, Any] | None = None) -> CallPlan:
    """The :class:`CallPlan` of ``func``; ConfigurationError naming the parameter and the
    fix when a parameter is unknown or a role is asked for twice. ``localns``: names to
    resolve string annotations with besides the function's module (the scope it was
    defined in)."""
    where = f"handler {getattr(func, '__qualname__', repr(func))}"
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        raise ConfigurationError(
            f"{where} is a generator (it yields): the SDK would never run its body; "
            "write a plain def or an async def that returns"
        )
    # An object whose __call__ is async counts as an async handler too.
    is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: cannot read its signature ({exc})") from exc
    arguments: list[Argument] = []
    payload: tuple[type, PayloadKind] | None = None
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigurationError(
                f"{where}: parameter {parameter} takes any arguments, so the SDK cannot "
                f"tell what it wants; list each parameter by name: {FIX}"
            )
        annotation = _resolve(func, parameter, localns, where)
        try:
            role, kind = classify(parameter.name, annotation)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: parameter {parameter.name!r}: {exc}") from None
        if role is None:
            shown = "" if annotation is None else f" (annotated {_describe(annotation)})"
            raise ConfigurationError(
                f"{where}: parameter {parameter.name!r}{shown} is unknown; {FIX}"
            )
        mismatch = _flavour_mismatch(annotation, is_async=is_async)
        if mismatch is not None:
            raise ConfigurationError(f"{where}: parameter {parameter.name!r}: {mismatch}")
        taken = [a.name for a in arguments if a.role is role]
        if taken:
            raise ConfigurationError(
                f"{where}: parameters {taken[0]!r} and {parameter.name!r} both ask for the "
                f"{role.value}; keep one"
            )
        if role is Role.PAYLOAD:
            payload_type = _unwrap_optional(annotation)
            assert isinstance(payload_type, type)  # noqa: S101 - classify checked it
            assert kind is not None  # noqa: S101 - classify names it with the role
            payload = (payload_type, kind)
        arguments.append(
            Argument(
                name=parameter.name,
                role=role,
                keyword=parameter.kind is parameter.KEYWORD_ONLY,
            )
        )
    return CallPlan(
        arguments=tuple(arguments),
        payload_type=payload[0] if payload else None,
        payload_kind=payload[1] if payload else None,
        is_async=is_async,
    )


def classify(name: str, annotation: object) -> tuple[Role | None, PayloadKind | None]:
    """The role of a parameter ``name`` annotated ``annotation`` (None: not annotated, or
    not resolvable); (None, None) when it has none."""
    target = _unwrap_optional(annotation)
    by_type = _role_of_type(target)
    if by_type is not None:
        return by_type
    if name == MESSAGE_NAME:
        return Role.MESSAGE, None
    if name == TX_NAME:
        return Role.TX, None
    return None, None


def payload_kind(tp: object) -> PayloadKind | None:
    """Which kind of payload type ``tp`` is, if any."""
    if not isinstance(tp, type):
        return None
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and issubclass(tp, pydantic.BaseModel):
        return PayloadKind.PYDANTIC
    msgspec = sys.modules.get("msgspec")
    if msgspec is not None and issubclass(tp, msgspec.Struct):
        return PayloadKind.MSGSPEC
    if dataclasses.is_dataclass(tp):
        return PayloadKind.DATACLASS
    if _is_typeddict(tp):
        return PayloadKind.TYPEDDICT
    return None


def _role_of_type(tp: object) -> tuple[Role, PayloadKind | None] | None:
    origin = typing.get_origin(tp) or tp
    if not isinstance(origin, type):
        return None
    if issubclass(origin, Message):
        return Role.MESSAGE, None
    flavour = _flavour(origin)
    if flavour is not None:
        return flavour[0], None
    kind = payload_kind(origin if origin is tp else None)
    if kind is not None:
        return Role.PAYLOAD, kind
    return None


def _flavour(origin: type) -> tuple[Role, bool] | None:
    """(TX or SESSION, whether it is the async kind) for a connection or session type."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        if issubclass(origin, psycopg.AsyncConnection):
            return Role.TX, True
        if issubclass(origin, psycopg.Connection):
            return Role.TX, False
    orm = sys.modules.get("sqlalchemy.orm")
    if orm is not None and issubclass(origin, orm.Session):
        return Role.SESSION, False
    aio = sys.modules.get("sqlalchemy.ext.asyncio")
    if aio is not None and issubclass(origin, aio.AsyncSession):
        return Role.SESSION, True
    return None


_KINDS = {
    (Role.TX, False): "psycopg.Connection",
    (Role.TX, True): "psycopg.AsyncConnection",
    (Role.SESSION, False): "sqlalchemy.orm.Session",
    (Role.SESSION, True): "sqlalchemy.ext.asyncio.AsyncSession",
}


def _flavour_mismatch(annotation: object, *, is_async: bool) -> str | None:
    """Why a connection or session annotation does not fit a plain (or async) handler."""
    origin = typing.get_origin(_unwrap_optional(annotation)) or _unwrap_optional(annotation)
    flavour = _flavour(origin) if isinstance(origin, type) else None
    if flavour is None or flavour[1] == is_async:
        return None
    role, async_kind = flavour
    given, wanted = _KINDS[role, async_kind], _KINDS[role, is_async]
    if is_async:
        return (
            f"annotated {given}, but the handler is async def: a blocking {given} would "
            f"stall its event loop; annotate it {wanted} (or make the handler a plain def)"
        )
    return (
        f"annotated {given}, but the handler is a plain def: annotate it {wanted} (or make "
        "the handler async def)"
    )


def _resolve(
    func: Callable[..., object],
    parameter: inspect.Parameter,
    localns: Mapping[str, Any] | None,
    where: str,
) -> object:
    """The parameter's annotation as an object; None when it has none. A string that does
    not resolve is refused, unless the name alone says what the parameter is."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return None
    if not isinstance(annotation, str):
        return annotation
    holder = types.SimpleNamespace(__annotations__={parameter.name: annotation})
    globalns = getattr(inspect.unwrap(func), "__globals__", {})
    try:
        hints = typing.get_type_hints(holder, globalns=dict(globalns), localns=dict(localns or {}))
    except Exception as exc:  # NameError, SyntaxError, TypeError...: all unresolvable
        if parameter.name in (MESSAGE_NAME, TX_NAME):
            return None
        raise ConfigurationError(
            f"{where}: the annotation {annotation!r} of parameter {parameter.name!r} does not "
            f"resolve ({type(exc).__name__}: {exc}); import the type at module level (not "
            "only under TYPE_CHECKING) or define it where the handler is defined"
        ) from exc
    return hints[parameter.name]


def _unwrap_optional(annotation: object) -> object:
    """``X`` for ``X | None`` and ``Optional[X]``; anything else as it is."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_typeddict(tp: type) -> bool:
    if typing.is_typeddict(tp):
        return True
    extensions = sys.modules.get("typing_extensions")
    return bool(extensions is not None and extensions.is_typeddict(tp))


def _describe(annotation: object) -> str:
    # dict[str, Any] is an instance of type on Python 3.10: shown by its repr, as later.
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return f"{annotation.__module__}.{annotation.__qualname__}"
    return repr(annotation)
