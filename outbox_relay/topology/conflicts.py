"""What differs between an existing exchange or queue and the file, and how to fix it.

RabbitMQ refuses to redeclare an object with other arguments: it closes the channel with
PRECONDITION_FAILED and a terse text such as::

    PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/':
    received the value 'quorum' of type 'longstr' but current is none

It names only the first argument that differs. :func:`adopt_current` turns such a text
into the next request to try (the same, with the existing value of that argument), so
the broker adapter can find every difference, one throwaway channel at a time, without
changing anything. AMQP itself cannot read a queue's arguments.

Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Queue arguments a policy can also set (the policy key is the argument without "x-").
POLICY_ARGUMENTS = frozenset(
    {
        "x-message-ttl",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-dead-letter-strategy",
        "x-overflow",
        "x-delivery-limit",
        "x-max-length",
        "x-max-length-bytes",
        "x-expires",
        "alternate-exchange",
    }
)

_STRUCTURAL = frozenset({"x-queue-type", "type", "durable"})
_PRECONDITION = re.compile(
    r"inequivalent arg '(?P<argument>[^']*)' for (?P<kind>queue|exchange) '(?P<name>.*)' "
    r"in vhost '(?P<vhost>.*)': received (?P<received>.+?) but current is (?P<current>.+)$",
    re.DOTALL,
)
_VALUE = re.compile(r"^(?:none|the value '(?P<typed>.*)' of type '(?P<type>\w+)'|'(?P<plain>.*)')$")
_INTEGER_TYPES = frozenset(
    {"byte", "short", "signedint", "long", "unsignedbyte", "unsignedshort", "unsignedint"}
)


@dataclass(frozen=True)
class BrokerValue:
    """A value as RabbitMQ printed it; ``text`` is None when the argument is absent."""

    text: str | None
    type: str | None = None

    @property
    def absent(self) -> bool:
        return self.text is None

    def __str__(self) -> str:
        return "(not set)" if self.text is None else repr(self.text)


@dataclass(frozen=True)
class Inequivalence:
    """One argument that differs: what the request asked for and what the object has."""

    kind: str  # "queue" or "exchange"
    name: str
    vhost: str
    argument: str
    received: BrokerValue
    current: BrokerValue

    def describe(self) -> str:
        return f"{self.argument}: exists as {self.current}, the topology asks for {self.received}"


def parse_precondition_failed(text: str) -> Inequivalence | None:
    """The difference RabbitMQ's PRECONDITION_FAILED text names; None if it names none."""
    match = _PRECONDITION.search(text.strip())
    if match is None:
        return None
    received, current = _value(match["received"]), _value(match["current"])
    if received is None or current is None:
        return None
    return Inequivalence(
        kind=match["kind"],
        name=match["name"],
        vhost=match["vhost"],
        argument=match["argument"],
        received=received,
        current=current,
    )


def _value(text: str) -> BrokerValue | None:
    match = _VALUE.match(text.strip())
    if match is None:
        return None
    if match["typed"] is not None:
        return BrokerValue(match["typed"], match["type"])
    if match["plain"] is not None:
        return BrokerValue(match["plain"])
    return BrokerValue(None)


class CannotAdoptError(ValueError):
    """Raised when a value printed by RabbitMQ cannot be turned back into a request."""


def adopt_current(request: Mapping[str, Any], difference: Inequivalence) -> dict[str, Any]:
    """``request`` with ``difference.argument`` set to the value the object already has.

    ``request`` maps each argument to its value, with ``durable`` (bool) and, for an
    exchange, ``type`` alongside the ``x-`` arguments, as RabbitMQ names them in errors.
    """
    adopted = dict(request)
    current = difference.current
    if current.text is None:
        if difference.argument in {"durable", "type"}:
            raise CannotAdoptError(f"{difference.argument} cannot be absent")
        adopted.pop(difference.argument, None)
        return adopted
    adopted[difference.argument] = _typed(current, request.get(difference.argument))
    return adopted


def _typed(value: BrokerValue, requested: Any) -> Any:
    text = value.text
    assert text is not None  # noqa: S101 - the caller handled absence
    kind = value.type or _type_of(requested)
    if kind == "longstr":
        return text
    if kind == "bool" and text in {"true", "false"}:
        return text == "true"
    if kind in _INTEGER_TYPES and re.fullmatch(r"-?\d+", text):
        return int(text)
    raise CannotAdoptError(f"cannot read back {text!r} as a value of type {kind!r}")


def _type_of(requested: Any) -> str:
    if isinstance(requested, bool):
        return "bool"
    if isinstance(requested, int):
        return "signedint"
    return "longstr"


def explain(
    kind: str,
    name: str,
    differences: tuple[Inequivalence, ...],
    *,
    vhost: str,
    messages: int | None = None,
    broker_text: str = "",
) -> str:
    """A conflict as a person can act on it: the object, each difference, the ways out."""
    lines = [f"{kind} {name!r} on vhost {vhost!r} already exists with other arguments:"]
    if differences:
        # The queue type and durability decide the way out: show them first.
        ordered = sorted(differences, key=lambda d: d.argument not in _STRUCTURAL)
        lines += [f"  - {d.describe()}" for d in ordered]
    else:
        lines.append(f"  - RabbitMQ said: {broker_text or 'PRECONDITION_FAILED'}")
    lines.append("RabbitMQ cannot change these in place. Ways out:")
    lines += [
        f"  * {fix}" for fix in _fixes(kind, name, differences, vhost=vhost, messages=messages)
    ]
    return "\n".join(lines)


def _fixes(
    kind: str,
    name: str,
    differences: tuple[Inequivalence, ...],
    *,
    vhost: str,
    messages: int | None,
) -> list[str]:
    fixes: list[str] = []
    policy_keys = [d.argument for d in differences if d.argument in POLICY_ARGUMENTS]
    if differences and len(policy_keys) == len(differences):
        definition = ", ".join(f'"{key.removeprefix("x-")}": ...' for key in policy_keys)
        fixes.append(
            "to get the new behaviour now, a policy can override "
            + ", ".join(policy_keys)
            + f" (rabbitmqctl set_policy -p {vhost!r} NAME '^{re.escape(name)}$' "
            + f"'{{{definition}}}' --apply-to {kind}s); the file still conflicts until "
            "the object is recreated"
        )
    fixes.append(f"give the {kind} a new name in the file and move its producers or consumers")
    if kind == "exchange":
        fixes.append(
            f"delete the exchange (it holds no messages; its bindings go with it: "
            f"rabbitmqadmin -V {vhost!r} delete exchange name={name!r}) and apply again"
        )
    elif messages == 0:
        fixes.append(
            f"it is empty: stop its consumers, delete it "
            f"(rabbitmqctl delete_queue -p {vhost!r} {name!r}) and apply again"
        )
    else:
        held = "some" if messages is None else str(messages)
        fixes.append(
            f"it holds {held} messages: drain it first, then delete it "
            f"(rabbitmqctl delete_queue -p {vhost!r} {name!r}) and apply again"
        )
    return fixes
