"""W3C trace context across the outbox, when OpenTelemetry is installed.

``publish`` stores the caller's current trace context (``traceparent``, ``tracestate``)
in the message headers, so a consumer can continue the trace; without OpenTelemetry, or
outside a span, nothing is added. Install the ``otel`` extra to use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

try:  # an optional dependency
    from opentelemetry import context as otel_context
    from opentelemetry import propagate
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    otel_context = None  # type: ignore[assignment]
    propagate = None  # type: ignore[assignment]

TRACE_HEADERS = ("traceparent", "tracestate")


def with_trace_context(headers: Mapping[str, object] | None) -> Mapping[str, object] | None:
    """``headers`` plus the current trace context; headers the caller set win."""
    if propagate is None:
        return headers
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    found = {key: value for key, value in carrier.items() if key in TRACE_HEADERS}
    if not found or not isinstance(headers, (Mapping, type(None))):
        return headers  # what is not a mapping is refused with the other arguments
    return {**found, **(headers or {})}


@contextlib.contextmanager
def trace_context_from(headers: Mapping[str, Any] | None) -> Iterator[None]:
    """Run the block inside the trace context carried by ``headers``, if any."""
    if propagate is None or otel_context is None or not headers:
        yield
        return
    carrier = {k: str(v) for k, v in headers.items() if k in TRACE_HEADERS and v is not None}
    if not carrier:
        yield
        return
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)
