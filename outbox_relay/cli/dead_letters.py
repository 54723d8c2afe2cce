"""`outbox-relay dead-letters`: the messages a consumer parked, for the person on call.

QUEUE is a parking lot (``billing.orders.parking``) or the queue it belongs to
(``billing.orders``). Listing and showing leave every message parked, in order (see
:mod:`outbox_relay.consumer.parking`). Exit codes: 0 done; 1 the broker refused or the
confirmation was declined; 2 bad usage.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from outbox_relay.cli.net import amqp_url_option
from outbox_relay.cli.options import (
    confirm,
    gathered,
    json_option,
    limit_option,
    progress,
    yes_option,
)
from outbox_relay.consumer.dead_letter import DeadLetter, DeadLetterFilter, parking_lot_for
from outbox_relay.consumer.parking import ParkingLot

LIST_LIMIT = 50
MAX_QUEUE_NAME_BYTES = 255


def _queue(func: Any) -> Any:
    return click.argument("queue", callback=_valid_queue)(func)


def _valid_queue(_ctx: click.Context, _param: click.Parameter, queue: str) -> str:
    """AMQP names are short strings: at most 255 bytes, the parking-lot suffix included."""
    parking = parking_lot_for(queue)
    size = len(parking.encode("utf-8", errors="surrogatepass"))
    if size > MAX_QUEUE_NAME_BYTES:
        shown = parking if len(parking) <= 60 else f"{parking[:40]}...{parking[-12:]}"
        raise click.BadParameter(
            f"its parking lot {shown!r} is {size} bytes long; AMQP allows queue names of at "
            f"most {MAX_QUEUE_NAME_BYTES} bytes: check the name"
        )
    if "\x00" in queue:
        raise click.BadParameter(f"{queue!r} contains a NUL character: check the name")
    return queue


def _where(
    message_ids: tuple[str, ...], error_type: str | None, routing_key: str | None
) -> DeadLetterFilter:
    return DeadLetterFilter(
        message_ids=frozenset(message_ids), error_type=error_type, routing_key=routing_key
    )


_filters = gathered(
    _where,
    click.option("--routing-key", help="Only messages first published with this key."),
    click.option(
        "--error-type",
        help="Only messages that failed with this exception (full name or class name).",
    ),
    click.option(
        "--message-id", "message_ids", multiple=True, help="Only this message (repeatable)."
    ),
)


def _now() -> dt.datetime:
    return dt.datetime.now(tz=dt.timezone.utc)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _line(letter: DeadLetter, now: dt.datetime) -> str:
    return (
        f"{letter.message_id or '-'}  age={_age(letter.age_s(now))}  "
        f"attempts={letter.attempts}  {letter.routing_key} -> {letter.failed_queue or '-'}\n"
        f"    {letter.error_type or '-'}: {letter.error_message}"
    )


def _confirmed(
    amqp_url: str, queue: str, where: DeadLetterFilter, action: str, *, yes: bool
) -> ParkingLot:
    """The parking lot to act on, once the user said yes. No connection stays open while
    the prompt waits (its heartbeats would stop)."""
    parking = parking_lot_for(queue)
    with ParkingLot(amqp_url, parking) as lot:
        depth = lot.depth()
    confirm(action, f"{where.describe()} of the {depth} in {parking!r}", yes=yes)
    return ParkingLot(amqp_url, parking)


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages a consumer parked after their last attempt (or a Reject)."""


@dead_letters.command("list")
@amqp_url_option
@_queue
@_filters
@limit_option(LIST_LIMIT, "List at most this many.")
@json_option("JSON lines, one message each.")
def list_letters(
    amqp_url: str,
    queue: str,
    where: DeadLetterFilter,
    limit: int,
    as_json: bool,
) -> None:
    """List parked messages, oldest first; they stay parked, in order."""
    with ParkingLot(amqp_url, parking_lot_for(queue)) as lot:
        letters = lot.browse(where, limit=limit)
    now = _now()
    for letter in letters:
        click.echo(json.dumps(letter.summary(now)) if as_json else _line(letter, now))
    if not letters and not as_json:
        click.echo("no parked messages match")


@dead_letters.command("show")
@amqp_url_option
@_queue
@click.argument("message_id")
@click.option("--payload", is_flag=True, help="Print the body too (it may hold personal data).")
def show_letter(amqp_url: str, queue: str, message_id: str, payload: bool) -> None:
    """Everything about one parked message, traceback included, as JSON."""
    parking = parking_lot_for(queue)
    with ParkingLot(amqp_url, parking) as lot:
        letter = lot.find(message_id)
    if letter is None:
        raise click.ClickException(f"no message {message_id!r} in {parking!r}")
    click.echo(json.dumps(letter.details(_now(), payload=payload), indent=2))


@dead_letters.command("replay")
@amqp_url_option
@_queue
@_filters
@limit_option(None, "Replay at most this many.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most this many messages a second (default: as fast as the broker confirms).",
)
@yes_option
def replay_letters(
    amqp_url: str,
    queue: str,
    where: DeadLetterFilter,
    limit: int | None,
    rate: float | None,
    yes: bool,
) -> None:
    """Send matching messages back to the queue that failed them, with a fresh set of
    attempts; each parked copy is removed only once the broker confirmed its replay."""
    with _confirmed(amqp_url, queue, where, "Replay", yes=yes) as lot:
        count = lot.replay(where, limit=limit, rate_per_s=rate, progress=progress("replayed"))
    click.echo(f"replayed {count} messages")


@dead_letters.command("purge")
@amqp_url_option
@_queue
@_filters
@limit_option(None, "Delete at most this many.")
@yes_option
def purge_letters(
    amqp_url: str,
    queue: str,
    where: DeadLetterFilter,
    limit: int | None,
    yes: bool,
) -> None:
    """Delete matching parked messages for good."""
    with _confirmed(amqp_url, queue, where, "Delete", yes=yes) as lot:
        count = lot.purge(where, limit=limit, progress=progress("deleted"))
    click.echo(f"deleted {count} messages")
