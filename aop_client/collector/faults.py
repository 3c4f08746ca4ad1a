"""Fault injection for the reference collector: which failure (if any) one request gets.

The decision is sans-I/O: :func:`decide_fault` draws from a ``random.Random``
it is given, so a seeded configuration yields the same fault sequence for the
same sequence of requests, and tests can replay it. :class:`FaultInjector` is
the thread-safe holder the app asks once per request.

A fault strikes at one of two stages: ``before`` processing (nothing is
stored, the client sees the failure) or ``after`` storing but before
answering (the events are stored, the client still sees a failure and must
retry, and the server deduplicates the retry), chosen per fault with
probability ``after_store_probability``.

Besides the random faults, ``poison_event_ids`` makes the server refuse with 400,
before anything is stored, every batch that holds one of those events: the
malformed-for-this-server event a client must isolate by splitting (protocol section 2).
"""

from __future__ import annotations

import enum
import math
import random
import threading
from dataclasses import dataclass
from typing import Iterable, Optional

from ..errors import ConfigError

__all__ = ["FaultKind", "FaultStage", "Fault", "FaultConfig", "decide_fault", "FaultInjector"]


class FaultKind(str, enum.Enum):
    """What the server does instead of (or before) answering normally."""

    ERROR_500 = "500"
    ERROR_503 = "503"
    TOO_MANY_429 = "429"
    TOO_LARGE_413 = "413"
    SLOW = "slow"  # answer normally after slow_delay seconds
    DROP = "drop"  # close the connection without any answer
    TIMEOUT = "timeout"  # hang for timeout_delay seconds, then close without answer


class FaultStage(str, enum.Enum):
    """When a fault strikes: before processing, or after storing but before answering."""

    BEFORE = "before"
    AFTER = "after"


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind and the stage at which it strikes."""

    kind: FaultKind
    stage: FaultStage

    @property
    def status(self) -> Optional[int]:
        """The HTTP status answered for this fault, or None when no status is sent."""
        return {FaultKind.ERROR_500: 500, FaultKind.ERROR_503: 503,
                FaultKind.TOO_MANY_429: 429, FaultKind.TOO_LARGE_413: 413}.get(self.kind)


_RATE_FIELDS = (
    ("rate_500", FaultKind.ERROR_500),
    ("rate_503", FaultKind.ERROR_503),
    ("rate_429", FaultKind.TOO_MANY_429),
    ("rate_413", FaultKind.TOO_LARGE_413),
    ("rate_slow", FaultKind.SLOW),
    ("rate_drop", FaultKind.DROP),
    ("rate_timeout", FaultKind.TIMEOUT),
)


def _check_fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise ConfigError(f"FaultConfig.{name} must be a number in [0, 1], got {value!r}", field=name, value=value)


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"FaultConfig.{name} must be a finite number >= 0, got {value!r}", field=name, value=value)


@dataclass(frozen=True)
class FaultConfig:
    """Per-request fault probabilities (mutually exclusive, summing to <= 1) and their parameters."""

    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_429: float = 0.0
    rate_413: float = 0.0
    rate_slow: float = 0.0
    rate_drop: float = 0.0
    rate_timeout: float = 0.0
    retry_after: Optional[float] = 1.0  # Retry-After seconds sent with 429 (and 503); None: no header
    slow_delay: float = 0.5
    timeout_delay: float = 60.0
    after_store_probability: float = 0.0  # share of faults that strike after the events were stored
    endpoints: frozenset = frozenset({"batch", "complete"})  # which routes faults apply to
    seed: Optional[int] = None
    poison_event_ids: frozenset = frozenset()  # a batch holding any of these event ids gets 400, nothing stored

    def __post_init__(self) -> None:
        for name, _kind in _RATE_FIELDS:
            _check_fraction(name, getattr(self, name))
        _check_fraction("after_store_probability", self.after_store_probability)
        if self.total_rate > 1.0 + 1e-9:
            raise ConfigError(f"FaultConfig rates sum to {self.total_rate!r}, more than 1", field="rates",
                              value=self.total_rate)
        for name in ("slow_delay", "timeout_delay"):
            _check_seconds(name, getattr(self, name))
        if self.retry_after is not None:
            _check_seconds("retry_after", self.retry_after)
        unknown = set(self.endpoints) - {"batch", "complete"}
        if unknown:
            raise ConfigError(f"FaultConfig.endpoints has unknown names {sorted(unknown)!r}", field="endpoints",
                              value=sorted(unknown))
        object.__setattr__(self, "endpoints", frozenset(self.endpoints))
        if isinstance(self.poison_event_ids, (str, bytes)) or not all(
                isinstance(i, str) for i in self.poison_event_ids):
            raise ConfigError("FaultConfig.poison_event_ids must be a collection of event id strings",
                              field="poison_event_ids", value=repr(self.poison_event_ids)[:80])
        object.__setattr__(self, "poison_event_ids", frozenset(self.poison_event_ids))

    @property
    def total_rate(self) -> float:
        """Probability that a request gets any fault."""
        return sum(getattr(self, name) for name, _kind in _RATE_FIELDS)


def decide_fault(config: FaultConfig, rng: random.Random) -> Optional[Fault]:
    """Draw the fault for one request (None: answer normally); always consumes exactly two draws."""
    pick = rng.random()
    stage_draw = rng.random()
    stage = FaultStage.AFTER if stage_draw < config.after_store_probability else FaultStage.BEFORE
    cumulative = 0.0
    for name, kind in _RATE_FIELDS:
        cumulative += getattr(config, name)
        if pick < cumulative:
            return Fault(kind, stage)
    return None


class FaultInjector:
    """Thread-safe holder of the live FaultConfig and its seeded random source."""

    def __init__(self, config: Optional[FaultConfig] = None) -> None:
        self._lock = threading.Lock()
        self.set(config or FaultConfig())

    @property
    def config(self) -> FaultConfig:
        """The FaultConfig in force."""
        return self._config

    def set(self, config: FaultConfig) -> None:
        """Replace the configuration and restart its random sequence from its seed."""
        if not isinstance(config, FaultConfig):
            raise ConfigError(f"faults must be a FaultConfig, got {type(config).__name__}", field="faults",
                              value=type(config).__name__)
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)

    def next_fault(self, endpoint: str) -> Optional[Fault]:
        """The fault for the next request to ``endpoint`` ("batch" or "complete")."""
        with self._lock:
            config = self._config
            if config.total_rate == 0.0 or endpoint not in config.endpoints:
                return None
            return decide_fault(config, self._rng)

    def poisoned(self, event_ids: Iterable[object]) -> Optional[str]:
        """The first of ``event_ids`` that is a poison event (its batch gets 400), or None."""
        poison = self._config.poison_event_ids
        if poison:
            for event_id in event_ids:
                if event_id in poison:
                    return str(event_id)
        return None
