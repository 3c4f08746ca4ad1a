"""The life of one batch as a pure state machine: (attempt state, outcome) -> the next step.

The flusher loop and the stateful property test drive the same function, so
the rules "no ack without a readable 2xx", "nothing lost" and "every delay in
[0, cap] and not below Retry-After" are checked on the code that runs.

One batch keeps its ``batch_id`` (the Idempotency-Key) across retries and
pauses; halves made by a split are new batches with new ids.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ValidationError
from .backoff import RetryPolicy
from .batching import split_in_halves
from .outcome import DeadLetter, Delivered, Outcome, Pause, Retry, Split

__all__ = ["BatchAttempt", "Step", "next_step"]


@dataclass(frozen=True)
class BatchAttempt:
    """One batch's retry state: its stable id, its events, failed attempts and pauses so far."""

    batch_id: str
    event_ids: tuple[str, ...]
    failures: int = 0  # failed attempts counted against max_retries (also persisted ones)
    pauses: int = 0  # consecutive 401/403/3xx answers (never exhaust the budget)

    def after_failure(self) -> "BatchAttempt":
        """The state after one more retryable failure."""
        return replace(self, failures=self.failures + 1, pauses=0)

    def after_pause(self) -> "BatchAttempt":
        """The state after one more pause answer."""
        return replace(self, pauses=self.pauses + 1)


@dataclass(frozen=True)
class Step:
    """What to do after one answer; every event of the batch lands in exactly one field or in ``retry``."""

    ack: tuple[str, ...] = ()  # delivered (2xx, not rejected): acknowledge in the store
    dead: tuple[tuple[str, str], ...] = ()  # (event_id, reason): move to dead letters
    halves: tuple[tuple[str, ...], ...] = ()  # send each as a new batch
    fallback: tuple[str, ...] = ()  # budget exhausted: park in the store's fallback state
    retry: BatchAttempt | None = None  # resend this same batch after ``delay`` seconds
    delay: float = 0.0
    paused: bool = False  # credentials/config refused: report until a 2xx is seen
    reason: str | None = None  # why this was not a plain delivery

    @property
    def done(self) -> bool:
        """True when the batch needs no further attempt."""
        return self.retry is None


def next_step(attempt: BatchAttempt, outcome: Outcome, policy: RetryPolicy, u: float) -> Step:
    """The step that follows ``outcome`` for ``attempt``; ``u`` in [0, 1) is the jitter draw."""
    ids = attempt.event_ids
    if isinstance(outcome, Delivered):
        if not outcome.rejected:  # the common case: everything accepted
            return Step(ack=tuple(dict.fromkeys(ids)))
        dead = tuple((i, outcome.rejected[i]) for i in dict.fromkeys(ids) if i in outcome.rejected)
        rejected = {i for i, _ in dead}
        return Step(ack=tuple(i for i in dict.fromkeys(ids) if i not in rejected), dead=dead)
    if isinstance(outcome, Split):
        if len(ids) < 2:
            return Step(dead=tuple((i, outcome.reason) for i in ids), reason=outcome.reason)
        first, second = split_in_halves(ids)
        return Step(halves=(tuple(first), tuple(second)), reason=outcome.reason)
    if isinstance(outcome, DeadLetter):
        return Step(dead=tuple((i, outcome.reason) for i in ids), reason=outcome.reason)
    if isinstance(outcome, Pause):
        return Step(
            retry=attempt.after_pause(),
            delay=policy.delay(attempt.pauses, u),
            paused=True,
            reason=outcome.reason,
        )
    if isinstance(outcome, Retry):
        failed = attempt.after_failure()
        if policy.exhausted(failed.failures):
            return Step(fallback=ids, reason=outcome.reason)
        return Step(
            retry=failed,
            delay=policy.delay(attempt.failures, u, outcome.retry_after),
            reason=outcome.reason,
        )
    raise ValidationError(f"unknown outcome {outcome!r}", field="outcome", value=None)
