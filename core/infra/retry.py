"""Bounded retries with backoff for network backends (Redis, S3).

A fault that may pass (a refused connection, a timeout, a 5xx) is retried a
few times with growing, jittered pauses; then the caller gets one clear
error naming the last cause. Nothing is retried forever: a mount must answer
EIO rather than hang.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import anyio
from pydantic import BaseModel, Field

from core.errors import ArtifactStoreError, ProviderError
from core.infra import metrics

T = TypeVar("T")


class RetryPolicy(BaseModel):
    """How often and how patiently to retry; the default waits about 3 s in all."""

    attempts: int = Field(default=6, ge=1)
    first_delay: float = Field(default=0.1, ge=0)
    max_delay: float = Field(default=1.0, ge=0)

    def delays(self) -> Iterator[float]:
        """The pauses between attempts: one fewer than the attempts."""
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(delay * 2, self.max_delay)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    transient: Callable[[BaseException], bool],
    what: str,
    error: type[ArtifactStoreError] = ProviderError,
) -> T:
    """``await attempt()`` until it succeeds, fails for good, or the policy is spent."""
    pauses = policy.delays()
    while True:
        try:
            result = await attempt()
        except Exception as exc:
            if not transient(exc):
                metrics.backend_request(what, "error")  # an answer, if not a happy one (a missing key)
                raise
            pause = next(pauses, None)
            if pause is None:
                metrics.backend_request(what, "gave_up")
                raise error(f"{what} failed after {policy.attempts} attempts: {exc!r}") from exc
            metrics.backend_request(what, "retried")
        else:
            metrics.backend_request(what, "ok")
            return result
        await anyio.sleep(pause)
