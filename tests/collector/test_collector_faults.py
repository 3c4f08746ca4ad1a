"""Fault injection of the reference collector: configuration checks, seeded sequences, both stages."""

from __future__ import annotations

import http.client
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.collector import FaultConfig, FaultKind, FaultStage
from aop_client.collector.faults import FaultInjector, decide_fault
from aop_client.errors import ConfigError
from collector_helpers import make_run, post_batch, post_completion


def _outcome(collector, events) -> str:
    try:
        status, _, _ = post_batch(collector, events, timeout=10)
    except (ConnectionError, http.client.RemoteDisconnected) as e:
        return f"closed:{type(e).__name__}"
    return str(status)


def _expected(kind) -> str:
    if kind is None or kind is FaultKind.SLOW:
        return "200"
    if kind in (FaultKind.DROP, FaultKind.TIMEOUT):
        return "closed"
    return kind.value


def test_seeded_faults_follow_the_replayed_sequence_and_rates(aop_collector) -> None:
    """With a fixed seed the observed answers are exactly the decide_fault replay, and rates are honoured."""
    faults = FaultConfig(rate_500=0.1, rate_503=0.1, rate_429=0.1, rate_413=0.05, rate_slow=0.05, rate_drop=0.05,
                         rate_timeout=0.05, slow_delay=0.01, timeout_delay=0.05, retry_after=0, seed=1234)
    aop_collector.set_faults(faults)
    rng = random.Random(1234)
    n = 300
    kinds = [(f := decide_fault(faults, rng)) and f.kind for _ in range(n)]
    expected = [_expected(kind) for kind in kinds]
    observed = []
    for _ in range(n):
        _run_id, events = make_run(1, aop_collector.org_salt_key)
        outcome = _outcome(aop_collector, events)
        observed.append("closed" if outcome.startswith("closed") else outcome)
    assert observed == expected
    for label, rate in (("500", 0.1), ("503", 0.1), ("429", 0.1), ("413", 0.05), ("closed", 0.1), ("200", 0.5)):
        share = observed.count(label) / n
        sigma = (rate * (1 - rate) / n) ** 0.5
        assert abs(share - rate) < 5 * sigma, (label, share, rate)
    logged = [r["fault"] for r in aop_collector.request_log() if r["fault"]]
    assert logged == [k.value for k in kinds if k is not None]


def test_fault_before_processing_stores_nothing(aop_collector) -> None:
    """A 500 injected before processing leaves the events unstored."""
    aop_collector.set_faults(FaultConfig(rate_500=1.0))
    _run_id, events = make_run(3, aop_collector.org_salt_key)
    assert post_batch(aop_collector, events)[0] == 500
    assert aop_collector.event_ids() == set()
    (record,) = aop_collector.request_log()
    assert (record["fault"], record["fault_stage"], record["status"]) == ("500", "before", 500)


def test_fault_after_storing_keeps_events_and_retry_is_deduplicated(aop_collector) -> None:
    """A 503 after storing: events are held though the client saw a failure; the retry is all duplicates."""
    aop_collector.set_faults(FaultConfig(rate_503=1.0, after_store_probability=1.0, retry_after=2))
    _run_id, events = make_run(3, aop_collector.org_salt_key)
    status, _, headers = post_batch(aop_collector, events)
    assert status == 503 and headers["retry-after"] == "2"
    assert aop_collector.event_ids() == {e["event_id"] for e in events}
    aop_collector.set_faults(FaultConfig())
    status, answer, _ = post_batch(aop_collector, events)
    assert (status, answer["accepted"], answer["duplicates"]) == (200, 0, 3)
    assert all(aop_collector.delivery_count(e["event_id"]) == 2 for e in events)


def test_drop_after_storing_closes_without_answer_but_keeps_events(aop_collector) -> None:
    """A dropped connection after storing: no HTTP answer, yet the events are held."""
    aop_collector.set_faults(FaultConfig(rate_drop=1.0, after_store_probability=1.0))
    _run_id, events = make_run(2, aop_collector.org_salt_key)
    assert _outcome(aop_collector, events).startswith("closed")
    assert aop_collector.event_ids() == {e["event_id"] for e in events}


def test_timeout_fault_outlasts_client_read_timeout(aop_collector) -> None:
    """A timeout fault hangs longer than the client's read timeout, which then fires."""
    aop_collector.set_faults(FaultConfig(rate_timeout=1.0, timeout_delay=5.0))
    _run_id, events = make_run(1, aop_collector.org_salt_key)
    with pytest.raises(TimeoutError):
        post_batch(aop_collector, events, timeout=0.3)


def test_429_carries_retry_after_and_endpoint_filter_spares_completion(aop_collector) -> None:
    """429 has Retry-After; with endpoints={'batch'} run completion is not faulted."""
    aop_collector.set_faults(FaultConfig(rate_429=1.0, retry_after=0.25, endpoints=frozenset({"batch"})))
    run_id, events = make_run(1, aop_collector.org_salt_key)
    status, _, headers = post_batch(aop_collector, events)
    assert status == 429 and float(headers["retry-after"]) == 0.25
    assert post_completion(aop_collector, run_id, 1)[0] == 200


@pytest.mark.parametrize(
    "kwargs, field",
    [({"rate_500": 1.5}, "rate_500"), ({"rate_drop": -0.1}, "rate_drop"), ({"rate_500": 0.6, "rate_503": 0.6}, "rates"),
     ({"slow_delay": float("inf")}, "slow_delay"), ({"retry_after": -1}, "retry_after"),
     ({"endpoints": frozenset({"nope"})}, "endpoints"), ({"rate_429": True}, "rate_429")],
)
def test_bad_fault_config_raises_config_error_naming_field(kwargs: dict, field: str) -> None:
    """Out-of-range rates, delays or endpoints raise ConfigError with the field."""
    with pytest.raises(ConfigError) as info:
        FaultConfig(**kwargs)
    assert info.value.field == field


rates = st.floats(0, 0.14, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(r500=rates, r503=rates, r429=rates, r413=rates, slow=rates, drop=rates, timeout=rates,
       after=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_decide_fault_is_deterministic_and_respects_zero_rates(r500, r503, r429, r413, slow, drop, timeout,
                                                             after, seed) -> None:
    """Property: equal seeds give equal sequences; kinds with rate 0 never occur; stage follows its bound."""
    config = FaultConfig(rate_500=r500, rate_503=r503, rate_429=r429, rate_413=r413, rate_slow=slow,
                         rate_drop=drop, rate_timeout=timeout, after_store_probability=after, seed=seed)
    one, two = FaultInjector(config), FaultInjector(config)
    first = [one.next_fault("batch") for _ in range(50)]
    assert first == [two.next_fault("batch") for _ in range(50)]
    zero = {kind for kind, rate in ((FaultKind.ERROR_500, r500), (FaultKind.ERROR_503, r503),
                                    (FaultKind.TOO_MANY_429, r429), (FaultKind.TOO_LARGE_413, r413),
                                    (FaultKind.SLOW, slow), (FaultKind.DROP, drop),
                                    (FaultKind.TIMEOUT, timeout)) if rate == 0}
    assert not any(f is not None and f.kind in zero for f in first)
    if after == 0:
        assert all(f is None or f.stage is FaultStage.BEFORE for f in first)
    if after == 1:
        assert all(f is None or f.stage is FaultStage.AFTER for f in first)


def test_full_rate_always_faults_and_zero_never() -> None:
    """A kind at rate 1 is drawn every time; an all-zero config never faults."""
    rng = random.Random(0)
    assert all(decide_fault(FaultConfig(rate_413=1.0), rng).kind is FaultKind.TOO_LARGE_413 for _ in range(100))
    assert all(decide_fault(FaultConfig(), rng) is None for _ in range(100))
