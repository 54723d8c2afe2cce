"""Retry delays for rows the broker refused."""

from __future__ import annotations

RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0


def retry_delay_s(
    attempt: int, *, base_s: float = RETRY_BASE_S, max_s: float = RETRY_MAX_S, jitter: float
) -> float:
    """Seconds before try ``attempt + 1``, for ``attempt >= 1`` failures so far.

    Exponential (base, 2 base, 4 base, ... capped at ``max_s``) with "equal jitter": the
    delay lies in [d/2, d], so retries of many rows spread out but never come early.
    ``jitter`` is a number in [0, 1], passed in so the function stays pure.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    exponent = min(attempt - 1, 62)
    ceiling = min(max_s, base_s * (2.0**exponent))
    return ceiling / 2.0 + jitter * ceiling / 2.0
