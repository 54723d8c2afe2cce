"""What applying a topology would do, and what it did: plain data, rendered for people.

:func:`outbox_relay.topology.plan` fills a :class:`Plan` from the broker without changing
anything; :func:`outbox_relay.topology.apply` refuses to start while the plan has a
conflict or a missing exchange, and returns an :class:`ApplyReport`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from outbox_relay.errors import TopologyError


class Action(str, Enum):
    CREATE = "create"  # does not exist yet
    MATCHES = "matches"  # exists with the same arguments
    CONFLICT = "conflict"  # exists with other arguments (or the broker refused it)
    MISSING = "missing"  # referenced, neither in the topology nor on the broker
    BIND = "bind"  # bindings are declared every time: AMQP cannot list them


@dataclass(frozen=True)
class PlanItem:
    """One exchange, queue or binding and what applying does to it.

    ``request`` is what is declared: ``type``/``durable`` and the arguments for an
    exchange, ``durable`` and the arguments for a queue, ``exchange``/``queue``/
    ``routing_key`` for a binding.
    """

    kind: str  # "exchange", "queue" or "binding"
    name: str
    action: Action
    request: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""  # the role of a derived queue, or the explanation of a conflict

    def label(self) -> str:
        if self.kind == "binding":
            r = self.request
            return f"binding {r['exchange']!r} -> {r['queue']!r} [{r['routing_key']}]"
        return f"{self.kind} {self.name!r}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action.value,
            "request": dict(self.request),
            "note": self.note,
        }


@dataclass(frozen=True)
class Plan:
    """The broker's state against the topology; nothing was changed to learn it."""

    vhost: str
    items: tuple[PlanItem, ...]
    warnings: tuple[str, ...] = ()

    def having(self, *actions: Action) -> tuple[PlanItem, ...]:
        return tuple(item for item in self.items if item.action in actions)

    @property
    def ok(self) -> bool:
        """True when applying can proceed: no conflict, no missing exchange."""
        return not self.having(Action.CONFLICT, Action.MISSING)

    @property
    def up_to_date(self) -> bool:
        return self.ok and not self.having(Action.CREATE)

    def render(self) -> str:
        lines = [f"vhost {self.vhost!r}:"]
        for item in self.items:
            lines.append(f"  {item.action.value:<9} {item.label()}{_role(item)}")
            if item.action in {Action.CONFLICT, Action.MISSING}:
                lines += [f"            {line}" for line in item.note.splitlines()]
        lines += [f"warning: {warning}" for warning in self.warnings]
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        counts = [
            f"{len(self.having(Action.CREATE))} to create",
            f"{len(self.having(Action.MATCHES))} already match",
            f"{len(self.having(Action.CONFLICT))} in conflict",
        ]
        missing = self.having(Action.MISSING)
        if missing:
            counts.append(f"{len(missing)} missing")
        counts.append(f"{len(self.having(Action.BIND))} bindings (declared on every apply)")
        return ", ".join(counts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "ok": self.ok,
            "up_to_date": self.up_to_date,
            "items": [item.as_dict() for item in self.items],
            "warnings": list(self.warnings),
        }


def _role(item: PlanItem) -> str:
    if item.action in {Action.CONFLICT, Action.MISSING} or not item.note:
        return ""
    return f" ({item.note})"


@dataclass(frozen=True)
class ApplyReport:
    """What ``apply`` declared. ``up_to_date`` when every exchange and queue already matched."""

    vhost: str
    created: tuple[PlanItem, ...]
    matched: tuple[PlanItem, ...]
    bindings: tuple[PlanItem, ...]
    warnings: tuple[str, ...] = ()

    @property
    def up_to_date(self) -> bool:
        return not self.created

    def render(self) -> str:
        lines = [f"warning: {warning}" for warning in self.warnings]
        ensured = f"{len(self.bindings)} bindings ensured"
        if self.up_to_date:
            lines.append(
                f"vhost {self.vhost!r} is up to date: {len(self.matched)} exchanges and queues "
                f"already match; {ensured}"
            )
        else:
            lines += [f"created {item.label()}{_role(item)}" for item in self.created]
            lines.append(
                f"vhost {self.vhost!r}: created {len(self.created)}, "
                f"{len(self.matched)} already matched; {ensured}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "up_to_date": self.up_to_date,
            "created": [item.as_dict() for item in self.created],
            "matched": [item.as_dict() for item in self.matched],
            "bindings": [item.as_dict() for item in self.bindings],
            "warnings": list(self.warnings),
        }


class TopologyConflictError(TopologyError):
    """Raised by ``apply`` before declaring anything when the plan has a conflict or a
    missing exchange; ``plan`` holds every item and its explanation."""

    def __init__(self, plan: Plan) -> None:
        problems = plan.having(Action.CONFLICT, Action.MISSING)
        text = "\n".join(item.note for item in problems)
        super().__init__(f"nothing was applied:\n{text}")
        self.plan = plan


class TopologyPartlyAppliedError(TopologyError):
    """Raised by ``apply`` when the broker refused a declaration after others succeeded
    (something changed between the check and the declare); says what was applied and what not."""

    def __init__(
        self, reason: str, *, applied: tuple[PlanItem, ...], not_applied: tuple[PlanItem, ...]
    ) -> None:
        done = "\n".join(f"  {item.label()}" for item in applied) or "  (nothing)"
        left = "\n".join(f"  {item.label()}" for item in not_applied)
        super().__init__(
            f"{reason}\nthe topology is partly applied; applied:\n{done}\nnot applied:\n{left}\n"
            "fix the cause and apply again (applying is idempotent)"
        )
        self.applied = applied
        self.not_applied = not_applied
