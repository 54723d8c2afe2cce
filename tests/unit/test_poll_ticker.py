"""The file descriptor that stands in for LISTEN behind a transaction-mode pooler."""

from __future__ import annotations

import select

from outbox_relay.poll_ticker import PollTicker


class TestPollTicker:
    def test_it_becomes_readable_and_drains_to_quiet(self) -> None:
        ticker = PollTicker(0.01)
        try:
            readable, _, _ = select.select([ticker.fileno()], [], [], 5.0)
            assert readable == [ticker.fileno()]
            assert ticker.drain() >= 1
        finally:
            ticker.close()

    def test_draining_an_empty_pipe_returns_zero(self) -> None:
        ticker = PollTicker(3600.0)
        try:
            assert ticker.drain() == 0
            assert select.select([ticker.fileno()], [], [], 0.05)[0] == []
        finally:
            ticker.close()

    def test_close_stops_the_thread_at_once(self) -> None:
        ticker = PollTicker(3600.0)
        ticker.close()
        assert not ticker._thread.is_alive()
