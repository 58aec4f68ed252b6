"""Politeness towards an LLM server: request and token rate limits, retry decisions, backoff with jitter.

Why not the `openai` client's built-in retries: they are invisible (a run cannot report how many requests were
retried or why), they cap a server's `Retry-After` at 60 s, and they cannot share one rate limit across the many
concurrent requests of a training step. `ChatClient` therefore builds `AsyncOpenAI(max_retries=0)` and retries here,
counting every retry and honouring `Retry-After` / `retry-after-ms`.

Everything in this module is pure asyncio and standard library; it does not import `openai`.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

__all__ = ["RateLimiter", "backoff_delay", "parse_retry_after"]


class RateLimiter:
    """A token bucket: at most `per_minute` units per minute, with bursts of at most `burst` units.

    Used twice per client: once counting requests (`api_requests_per_minute`), once counting tokens
    (`api_tokens_per_minute`, charged with an upper bound before the call and corrected with the real usage after).
    In any window of `w` seconds at most `burst + per_minute / 60 · w` units pass. `burst` defaults to one second's
    worth (at least one unit), so a limiter never front-loads a minute of requests into the first second.

    `per_minute=None` means unlimited: `acquire` returns at once.
    """

    def __init__(self, per_minute: float | None, burst: float | None = None):
        if per_minute is not None and not per_minute > 0:
            raise ValueError(f"per_minute must be None (unlimited) or > 0, got {per_minute!r}.")
        self.rate = None if per_minute is None else float(per_minute) / 60.0  # units per second
        self.capacity = None if self.rate is None else float(burst if burst is not None else max(1.0, self.rate))
        self._level = self.capacity
        self._updated = time.monotonic()
        self._lock: asyncio.Lock | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Wait until `amount` units fit, take them, and return the seconds waited.

        An amount larger than the burst is let through once the bucket is full (the bucket then goes negative and
        later requests wait for the debt): a single oversized request is slowed, never refused.
        """
        if self.rate is None:
            return 0.0
        if self._lock is None:
            self._lock = asyncio.Lock()
        waited = 0.0
        async with self._lock:  # FIFO: a large request is not starved by a stream of small ones
            need = min(float(amount), self.capacity)
            while True:
                self._refill()
                if self._level >= need:
                    self._level -= float(amount)
                    return waited
                delay = (need - self._level) / self.rate
                await asyncio.sleep(delay)
                waited += delay

    def refund(self, amount: float) -> None:
        """Give back units charged in excess (e.g. the token estimate minus the real usage; negative = charge more)."""
        if self.rate is None:
            return
        self._refill()
        self._level = min(self.capacity, self._level + float(amount))


def parse_retry_after(headers) -> float | None:
    """Seconds a server asks the client to wait: `retry-after-ms`, `retry-after` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    try:
        value = headers.get("retry-after-ms")
        if value is not None:
            return max(0.0, float(value) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(
    attempt: int,
    retry_after: float | None = None,
    base: float = 0.5,
    maximum: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (1 = first retry).

    Exponential backoff with "full jitter" (uniform in [0, min(maximum, base · 2^(attempt-1))]), which spreads the
    retries of many concurrent requests instead of having them hammer the server in lock-step. A server's
    `Retry-After` is a floor (honoured exactly, plus up to 10 % jitter), capped at `maximum` only when it is absurd
    (more than 10 × `maximum`).
    """
    rng = rng or random
    cap = min(maximum, base * (2 ** max(0, attempt - 1)))
    delay = rng.uniform(0.0, cap)
    if retry_after is not None:
        floor = min(retry_after, 10 * maximum)
        delay = max(delay, floor + rng.uniform(0.0, 0.1 * floor))
    return delay
