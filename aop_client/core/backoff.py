"""Retry timing: exponential backoff with full jitter, Retry-After as a floor, and the retry budget.

Pure: the caller supplies the uniform draw ``u`` and the current time ``now``.
The policy is an immutable value in the style of urllib3's ``Retry``.
:class:`FailureStreak` paces a loop that keeps failing the same way (a store
that cannot be written): growing waits, and which failures to log.
"""

from __future__ import annotations

import datetime
import email.utils
import math
from dataclasses import dataclass

from ..errors import ConfigError, ValidationError

__all__ = ["RetryPolicy", "FailureStreak", "parse_retry_after"]

# 2.0 ** _MAX_EXPONENT is finite; larger attempts are clamped (the cap wins long before).
_MAX_EXPONENT = 1000


@dataclass(frozen=True)
class RetryPolicy:
    """How many failed attempts a batch gets and how long to wait between them.

    ``delay(attempt, u)`` is full jitter: ``u * min(cap, base * 2**attempt)``;
    a server's Retry-After raises the delay to at least ``min(retry_after, cap)``.
    ``attempt`` is the 0-based index of the failed attempt being waited after.
    Per protocol section 2, a batch is exhausted after ``max_retries`` failed
    attempts (at least one attempt is always made, so 0 behaves like 1).
    """

    max_retries: int = 3
    base: float = 1.0
    cap: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(
                f"max_retries must be an int >= 0, got {self.max_retries!r}",
                field="max_retries",
                value=self.max_retries,
            )
        for name in ("base", "cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}", field=name, value=value)
        if self.base > self.cap:
            raise ConfigError(f"base={self.base!r} is larger than cap={self.cap!r}", field="base", value=self.base)

    @classmethod
    def from_config(cls, config: object) -> "RetryPolicy":
        """Build from a ClientConfig (max_retries, retry_backoff_base, retry_backoff_max)."""
        return cls(
            max_retries=getattr(config, "max_retries"),
            base=float(getattr(config, "retry_backoff_base")),
            cap=float(getattr(config, "retry_backoff_max")),
        )

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the jittered delay after failed attempt ``attempt``: min(cap, base*2**attempt)."""
        if attempt < 0:
            raise ValidationError(f"attempt must be >= 0, got {attempt!r}", field="attempt", value=attempt)
        return min(self.cap, self.base * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, u: float, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` given a uniform draw u in [0, 1)."""
        if not (0.0 <= u < 1.0):
            raise ValidationError(f"u must be in [0, 1), got {u!r}", field="u", value=u)
        wait = u * self.ceiling(attempt)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            wait = max(wait, min(retry_after, self.cap))
        return min(wait, self.cap)

    def exhausted(self, attempts: int) -> bool:
        """True once ``attempts`` failed attempts used up the budget (max_retries, at least 1)."""
        return attempts >= max(1, self.max_retries)

    def with_max_retries(self, max_retries: int) -> "RetryPolicy":
        """A copy with another retry budget (the policy itself never changes)."""
        return RetryPolicy(max_retries=max_retries, base=self.base, cap=self.cap)


class FailureStreak:
    """Consecutive failures of one loop (not of a batch): how long to wait before the next try.

    ``failed(u)`` returns the delay: full jitter over ``min(cap, base * 2**n)``,
    never below ``base`` (no spinning). ``succeeded()`` ends the streak and
    returns how many failures it had (0: nothing to recover from). What is
    logged, and how often, is the failure reporter's business
    (:mod:`aop_client.core.failure_report`), not this object's.
    """

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        if not 0 < base <= cap:
            raise ConfigError(f"FailureStreak needs 0 < base <= cap, got base={base!r} cap={cap!r}",
                              field="base", value=base)
        self.base, self.cap = float(base), float(cap)
        self.failures = 0
        self.started_at: float | None = None

    def failed(self, now: float, u: float) -> float:
        """Record one failure at ``now`` (monotonic seconds); returns the seconds to wait."""
        if not (0.0 <= u < 1.0):
            raise ValidationError(f"u must be in [0, 1), got {u!r}", field="u", value=u)
        if self.failures == 0:
            self.started_at = now
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures, _MAX_EXPONENT))
        self.failures += 1
        return max(self.base, u * ceiling)

    def succeeded(self) -> int:
        """End the streak; returns how many failures it had."""
        n, self.failures, self.started_at = self.failures, 0, None
        return n


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable.

    A date in the past gives 0.0. Unreadable values (garbage, negative or
    non-finite numbers) give None, so the caller falls back to plain backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.replace(".", "", 1).isdigit():
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    try:
        stamp = when.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    if when.tzinfo is None:
        # RFC 7231 dates are GMT; a naive result means the zone was "-0000"/absent: treat as UTC.
        stamp = when.replace(tzinfo=datetime.timezone.utc).timestamp()
    return max(0.0, stamp - now)
