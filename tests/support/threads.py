"""Running a daemon's ``run()`` in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def in_background(
    run: Callable[[], None],
    stop: Callable[[], None],
    *,
    name: str,
    ready: threading.Event | None = None,
    stop_within_s: float = 15.0,
) -> Iterator[None]:
    """Run ``run`` in a thread; on exit ``stop`` it and join. An exception in the thread is
    raised in the test. With ``ready``, wait for it first (15 s at most)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # surfaced in the test's thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        if ready is not None:
            assert ready.wait(15) or errors, f"{name} was not ready within 15 s"
            if errors:
                raise errors[0]
        yield
    finally:
        stop()
        thread.join(stop_within_s)
        assert not thread.is_alive(), f"{name} did not stop within {stop_within_s:g} s of stop()"
        if errors:
            raise errors[0]
