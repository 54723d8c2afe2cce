"""Reading a topology file (TOML) into a :class:`Topology`, rejecting anything unclear.

Every error names the file, the key (``queues[1].retry.delays``), the line where it can
find it cheaply, and the fix, before anything touches the broker. The format is
documented in ``docs/topology.md``; ``deploy/topology.example.toml`` is a full example.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from outbox_relay.durations import parse_duration_ms
from outbox_relay.errors import TopologyError
from outbox_relay.topology.model import (
    Binding,
    ExchangeSpec,
    InvalidTopologyError,
    QueueSpec,
    QueueType,
    RetryPolicy,
    Topology,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

T = TypeVar("T")
D = TypeVar("D")

TOP_KEYS = ("exchanges", "queues")
EXCHANGE_KEYS = ("name", "type", "durable", "alternate_exchange")
QUEUE_KEYS = ("name", "type", "bindings", "retry", "delivery_limit", "max_priority")
BINDING_KEYS = ("exchange", "routing_key")
RETRY_KEYS = ("delays", "max_attempts")


def load_topology(path: str | Path) -> Topology:
    """Parse and validate the topology file at ``path``; raises TopologyError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read the topology file: {exc.strerror}") from exc
    return parse_topology(text, source=str(path))


def parse_topology(text: str, *, source: str = "<topology>") -> Topology:
    """Parse and validate topology TOML; ``source`` names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{source}: not valid TOML: {exc}") from exc
    return _Reader(text, source).topology(document)


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self._lines = text.splitlines()
        self._source = source

    def topology(self, document: Mapping[str, Any]) -> Topology:
        self._keys(document, TOP_KEYS, "")
        exchanges = [
            self._build(f"exchanges[{i}]", self._exchange, entry, i)
            for i, entry in enumerate(self._tables(document, "exchanges"))
        ]
        queues = [
            self._build(f"queues[{i}]", self._queue, entry, i)
            for i, entry in enumerate(self._tables(document, "queues"))
        ]
        try:
            return Topology(exchanges=exchanges, queues=queues, source=self._source)
        except InvalidTopologyError as exc:
            raise self._error(exc.key or "", str(exc)) from exc

    def _exchange(self, entry: Mapping[str, Any], index: int) -> ExchangeSpec:
        key = f"exchanges[{index}]"
        self._keys(entry, EXCHANGE_KEYS, key)
        return ExchangeSpec(
            name=self._required(entry, key, "name", str),
            type=self._optional(entry, key, "type", str, "topic"),
            durable=self._optional(entry, key, "durable", bool, True),
            alternate_exchange=self._optional(entry, key, "alternate_exchange", str, None),
        )

    def _queue(self, entry: Mapping[str, Any], index: int) -> QueueSpec:
        key = f"queues[{index}]"
        self._keys(entry, QUEUE_KEYS, key)
        kind = self._optional(entry, key, "type", str, QueueType.CLASSIC.value)
        if kind not in {t.value for t in QueueType}:
            raise self._error(
                f"{key}.type", f"{kind!r} is not a queue type: use 'classic' or 'quorum'"
            )
        bindings = [
            self._binding(binding, f"{key}.bindings[{j}]")
            for j, binding in enumerate(self._tables(entry, "bindings", key))
        ]
        retry = None
        if "retry" in entry:
            retry_entry = self._required(entry, key, "retry", dict)
            retry = self._build(f"{key}.retry", self._retry, retry_entry, f"{key}.retry")
        return QueueSpec(
            name=self._required(entry, key, "name", str),
            type=QueueType(kind),
            bindings=tuple(bindings),
            retry=retry,
            delivery_limit=self._optional(entry, key, "delivery_limit", int, None),
            max_priority=self._optional(entry, key, "max_priority", int, None),
        )

    def _binding(self, entry: Mapping[str, Any], key: str) -> Binding:
        self._keys(entry, BINDING_KEYS, key)
        return Binding(
            exchange=self._required(entry, key, "exchange", str),
            routing_key=self._optional(entry, key, "routing_key", str, "#"),
        )

    def _retry(self, entry: Mapping[str, Any], key: str) -> RetryPolicy:
        self._keys(entry, RETRY_KEYS, key)
        delays = self._required(entry, key, "delays", list)
        delays_ms = []
        for j, delay in enumerate(delays):
            try:
                delays_ms.append(parse_duration_ms(delay))
            except (TypeError, ValueError) as exc:
                raise self._error(f"{key}.delays[{j}]", str(exc)) from exc
        return RetryPolicy(
            delays_ms=tuple(delays_ms), max_attempts=self._required(entry, key, "max_attempts", int)
        )

    # -- helpers ------------------------------------------------------------------------

    def _build(self, key: str, build: Callable[..., T], *args: Any) -> T:
        """Run a model constructor, naming ``key`` in the errors it raises."""
        try:
            return build(*args)
        except InvalidTopologyError:
            raise
        except TopologyError as exc:
            raise self._error(key, str(exc)) from exc

    def _keys(self, entry: Mapping[str, Any], allowed: Sequence[str], key: str) -> None:
        for name in entry:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self._error(
                    where, f"unknown key {name!r}: the keys allowed here are {', '.join(allowed)}"
                )

    def _tables(
        self, entry: Mapping[str, Any], name: str, key: str = ""
    ) -> list[Mapping[str, Any]]:
        where = f"{key}.{name}" if key else name
        value = entry.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            table = re.sub(r"\[\d+\]", "", where)
            raise self._error(
                where, f"must be an array of tables: [[{table}]] sections or {name} = [{{...}}]"
            )
        return value

    def _required(self, entry: Mapping[str, Any], key: str, name: str, expected: type[T]) -> T:
        value = self._optional(entry, key, name, expected, None)
        if value is None:  # TOML has no null: the key is missing
            raise self._error(f"{key}.{name}", f"{name!r} is required")
        return value

    def _optional(
        self, entry: Mapping[str, Any], key: str, name: str, expected: type[T], default: D
    ) -> T | D:
        if name not in entry:
            return default
        value = entry[name]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise self._error(
                f"{key}.{name}",
                f"{value!r} is {_toml_type(type(value))}, expected {_toml_type(expected)}",
            )
        return value

    def _error(self, key: str, message: str) -> InvalidTopologyError:
        line = self._line_of(key)
        at = f" (line {line})" if line else ""
        return InvalidTopologyError(f"{self._source}: {key}{at}: {message}", key=key)

    def _line_of(self, key: str) -> int | None:
        """The line of ``key`` when the file uses [[table]] headers; cheap and approximate."""
        match = re.match(r"^(?P<table>\w+)\[(?P<index>\d+)\](?P<rest>.*)$", key)
        if match is None:
            return None
        header = re.compile(rf"^\s*\[\[\s*{match['table']}\s*\]\]")
        starts = [n for n, line in enumerate(self._lines) if header.match(line)]
        index = int(match["index"])
        if index >= len(starts):
            return None
        start = starts[index]
        leaf = re.findall(r"\.(\w+)", match["rest"])
        if not leaf:
            return start + 1
        assignment = re.compile(rf"^\s*(?:{leaf[-1]}\s*=|\[+\s*{match['table']}\.{leaf[-1]}\s*\]+)")
        end = next((s for s in starts if s > start), len(self._lines))
        for number in range(start, end):
            if assignment.match(self._lines[number]):
                return number + 1
        return start + 1


def _toml_type(kind: type) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a float"}
    names |= {list: "an array", dict: "a table"}
    return names.get(kind, kind.__name__)
