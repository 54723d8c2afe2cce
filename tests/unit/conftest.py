"""Unit tier fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fakes import leave_relays


@pytest.fixture(autouse=True)
def _leave_relays() -> Iterator[None]:
    with leave_relays():
        yield
