"""Tests of aop_client.core.backoff: full-jitter delays, Retry-After floors, the retry budget."""

from __future__ import annotations

import email.utils
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.core.backoff import FailureStreak, RetryPolicy, parse_retry_after
from aop_client.errors import ConfigError, ValidationError

EXAMPLES = settings(max_examples=int(os.environ.get("AOP_HYPOTHESIS_EXAMPLES", "200")), deadline=None)

policies = st.builds(
    lambda base, extra, retries: RetryPolicy(max_retries=retries, base=base, cap=base + extra),
    st.floats(0, 100, allow_nan=False),
    st.floats(0, 1000, allow_nan=False),
    st.integers(0, 20),
)
unit = st.floats(0, 1, exclude_max=True)


@EXAMPLES
@given(policies, st.integers(0, 5000), unit, st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_delay_always_within_zero_and_cap(policy: RetryPolicy, attempt: int, u: float, retry_after: float | None) -> None:
    """Every delay lies in [0, cap], whatever the attempt, draw or Retry-After."""
    delay = policy.delay(attempt, u, retry_after)
    assert 0.0 <= delay <= policy.cap


@EXAMPLES
@given(policies, st.integers(0, 64), unit, st.floats(0, 10_000, allow_nan=False))
def test_retry_after_is_a_floor_capped_at_cap(policy: RetryPolicy, attempt: int, u: float, retry_after: float) -> None:
    """A Retry-After raises the delay to at least min(retry_after, cap)."""
    assert policy.delay(attempt, u, retry_after) >= min(retry_after, policy.cap)


@EXAMPLES
@given(policies, st.integers(0, 64), unit)
def test_delay_is_full_jitter_of_the_exponential_ceiling(policy: RetryPolicy, attempt: int, u: float) -> None:
    """Without Retry-After the delay is exactly u * min(cap, base * 2**attempt)."""
    expected = u * min(policy.cap, policy.base * 2.0**attempt)
    assert math.isclose(policy.delay(attempt, u), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_ceiling_doubles_until_the_cap() -> None:
    """The ceiling sequence for base 1, cap 10 is 1, 2, 4, 8, 10, 10."""
    policy = RetryPolicy(max_retries=3, base=1.0, cap=10.0)
    assert [policy.ceiling(a) for a in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@EXAMPLES
@given(st.integers(0, 50), st.integers(0, 100))
def test_exhausted_after_max_retries_failures(max_retries: int, failures: int) -> None:
    """The budget is used up after max_retries failed attempts (0 behaves like 1)."""
    policy = RetryPolicy(max_retries=max_retries)
    assert policy.exhausted(failures) == (failures >= max(1, max_retries))


@pytest.mark.parametrize("u", [-0.1, 1.0, float("nan"), 2.0])
def test_delay_refuses_draws_outside_unit_interval(u: float) -> None:
    """u must be in [0, 1); anything else is a ValidationError naming u."""
    with pytest.raises(ValidationError) as info:
        RetryPolicy().delay(0, u)
    assert info.value.field == "u"


@pytest.mark.parametrize(
    "kwargs, field",
    [({"max_retries": -1}, "max_retries"), ({"base": -1.0}, "base"), ({"cap": float("inf")}, "cap"),
     ({"base": 5.0, "cap": 1.0}, "base"), ({"max_retries": True}, "max_retries")],
)
def test_policy_refuses_bad_fields(kwargs: dict, field: str) -> None:
    """A bad policy field raises ConfigError naming that field."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**kwargs)
    assert info.value.field == field


def test_policy_is_immutable_and_copies_on_change() -> None:
    """with_max_retries returns a new policy and leaves the original unchanged."""
    policy = RetryPolicy(max_retries=3)
    other = policy.with_max_retries(7)
    assert (policy.max_retries, other.max_retries) == (3, 7)
    with pytest.raises(AttributeError):
        policy.max_retries = 9  # type: ignore[misc]


@EXAMPLES
@given(st.integers(0, 10**6), st.floats(0, 2e9, allow_nan=False))
def test_retry_after_seconds_parse(seconds: int, now: float) -> None:
    """Delta-seconds parse to themselves, independent of now."""
    assert parse_retry_after(str(seconds), now) == float(seconds)


@EXAMPLES
@given(st.integers(0, 10**6), st.integers(946_684_800, 4_000_000_000))
def test_retry_after_http_date_is_relative_to_now(ahead: int, now: int) -> None:
    """An HTTP-date Retry-After gives the seconds from now until it (0 when in the past)."""
    header = email.utils.formatdate(now + ahead, usegmt=True)
    assert parse_retry_after(header, float(now)) == float(ahead)
    assert parse_retry_after(header, float(now + ahead + 50)) == 0.0


@EXAMPLES
@given(st.text(max_size=40))
def test_retry_after_never_raises(value: str) -> None:
    """Arbitrary header text gives None or a finite, non-negative number."""
    result = parse_retry_after(value, 1_700_000_000.0)
    assert result is None or (math.isfinite(result) and result >= 0)


@pytest.mark.parametrize("value", [None, "", "  ", "-5", "soon", "1e3", "inf", "Wed, 99 Foo 2020"])
def test_retry_after_unreadable_values_are_none(value: str | None) -> None:
    """Absent, negative or unreadable Retry-After values are None (plain backoff applies)."""
    assert parse_retry_after(value, 0.0) is None


@settings(max_examples=200, deadline=None)
@given(draws=st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=1, max_size=200),
       recover_every=st.integers(min_value=0, max_value=7))
def test_failure_streak_waits_between_base_and_cap_and_counts_its_streak(
        draws: list[float], recover_every: int) -> None:
    """Every wait is in [base, cap]; succeeded() returns the failures since the last success."""
    streak = FailureStreak(base=0.1, cap=5.0)
    since = 0
    for i, u in enumerate(draws):
        assert 0.1 <= streak.failed(float(i), u) <= 5.0
        since += 1
        if recover_every and i % recover_every == 0:
            assert streak.succeeded() == since
            since = 0
    assert streak.succeeded() == since and streak.failures == 0


def test_failure_streak_doubles_its_ceiling_up_to_the_cap() -> None:
    streak = FailureStreak(base=0.1, cap=5.0)
    delays = [streak.failed(float(i), 0.999) for i in range(10)]
    assert delays[:3] == pytest.approx([0.1, 0.1998, 0.3996]) and delays[-1] == pytest.approx(4.995)
    assert streak.started_at == 0.0 and streak.succeeded() == 10 and streak.started_at is None


def test_failure_streak_refuses_bad_fields() -> None:
    with pytest.raises(ConfigError):
        FailureStreak(base=0.0)
    with pytest.raises(ConfigError):
        FailureStreak(base=2.0, cap=1.0)
    with pytest.raises(ValidationError):
        FailureStreak().failed(0.0, 1.0)
