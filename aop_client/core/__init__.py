"""The sans-I/O delivery core: pure decisions about retries, outcomes, batches and one batch's life.

Nothing in this package sleeps, reads a clock, draws random numbers or touches
files or sockets: the caller passes ``now`` and ``u`` (a uniform draw in [0, 1))
in. The thin I/O adapters around it are :mod:`aop_client.transport` (HTTP) and
:mod:`aop_client.flusher` (the loop over the store).
"""

from .backoff import RetryPolicy, parse_retry_after
from .batching import build_batch_body, should_flush, split_in_halves
from .flush_machine import BatchAttempt, Step, next_step
from .outcome import Delivered, DeadLetter, Outcome, Pause, Retry, Split, classify

__all__ = [
    "RetryPolicy",
    "parse_retry_after",
    "build_batch_body",
    "should_flush",
    "split_in_halves",
    "BatchAttempt",
    "Step",
    "next_step",
    "Outcome",
    "Delivered",
    "Split",
    "Pause",
    "Retry",
    "DeadLetter",
    "classify",
]
