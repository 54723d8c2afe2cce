"""Whether the exchanges a batch goes to exist: asked of the broker with a passive
declare on a channel of its own, and remembered for a while."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from pika.channel import Channel

from outbox_relay.errors import BrokerUnavailableError
from outbox_relay.publisher.link import Link
from outbox_relay.publisher.pika_transport import ChunkedConnection

EXCHANGE_CHECK_TTL_S = 10.0


class ExchangeCheck:
    """Finds the exchanges that do not exist, trusting one seen to exist for
    EXCHANGE_CHECK_TTL_S. ``connection()`` is the connection to ask on (it raises
    BrokerUnavailableError when there is none); ``vhost()`` names its vhost."""

    def __init__(
        self,
        link: Link,
        *,
        connection: Callable[[], ChunkedConnection],
        vhost: Callable[[], str],
    ) -> None:
        self._link = link
        self._connection = connection
        self._vhost = vhost
        self._seen: dict[str, float] = {}  # exchange -> trusted to exist until (monotonic)

    def missing(self, exchanges: Collection[str], *, fresh: bool = False) -> dict[str, str]:
        """The exchanges among ``exchanges`` that do not exist, each with the error to
        record; with ``fresh``, asking the broker again about every one."""
        if fresh:
            self._seen.clear()
        now = time.monotonic()
        missing: dict[str, str] = {}
        for exchange in exchanges:
            if not exchange or self._seen.get(exchange, 0.0) > now:
                continue
            if self._exists(exchange):
                self._seen[exchange] = now + EXCHANGE_CHECK_TTL_S
            else:
                missing[exchange] = (
                    f"exchange '{exchange}' does not exist on vhost '{self._vhost()}': "
                    "run `outbox-relay topology apply` or create it"
                )
        return missing

    def _exists(self, exchange: str) -> bool:
        link = self._link
        conn = self._connection()
        result: list[bool] = []
        probe: list[Channel] = []

        def on_open(channel: Channel) -> None:
            probe.append(channel)
            channel.add_on_close_callback(lambda _ch, _reason: link.note(result, False))
            channel.exchange_declare(
                exchange, passive=True, callback=lambda _frame: link.note(result, True)
            )

        conn.channel(on_open_callback=on_open)
        link.run_until(lambda: bool(result) or link.error is not None, link.connect_timeout_s)
        link.raise_if_lost()
        if probe and probe[0].is_open:
            probe[0].close()
        if not result:  # no answer is not an answer that the exchange is missing
            raise BrokerUnavailableError(
                f"the broker did not answer whether exchange {exchange!r} exists within "
                f"{link.connect_timeout_s:g} s"
            )
        return result[0]
