"""Fuzz harness: classify() on arbitrary status, headers and body returns a valid Outcome and never raises.

Run with more examples: AOP_FUZZ_EXAMPLES=100000 python -m pytest fuzz/fuzz_batch_response.py
"""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client.core.outcome import DeadLetter, Delivered, Pause, Retry, Split, classify

FUZZ = settings(
    max_examples=int(os.environ.get("AOP_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
plausible_bodies = st.fixed_dictionaries(
    {},
    optional={
        "accepted": json_values | st.integers(-5, 10),
        "duplicates": json_values | st.integers(-5, 10),
        "rejected": st.lists(
            st.fixed_dictionaries({}, optional={"event_id": st.sampled_from(["a", "b", "c"]) | json_values,
                                                "reason": json_values}) | json_values,
            max_size=4,
        ) | json_values,
    },
).map(orjson.dumps)
bodies = st.binary(max_size=2000) | st.just(b"{\"accepted\": 99999999999999999999999}") | plausible_bodies | json_values.map(orjson.dumps)
statuses = st.none() | st.integers(-(2**31), 2**31) | st.integers(100, 599)
headers = st.dictionaries(st.sampled_from(["Retry-After", "retry-after", "Content-Type", "X"]) | st.text(max_size=10),
                          st.text(max_size=40) | st.integers(0, 10**6).map(str), max_size=4)


@FUZZ
@given(statuses, headers, bodies, st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=6),
       st.floats(0, 4e9, allow_nan=False), st.booleans())
def test_classify_is_total(status, header_map, body, ids, now, truncated) -> None:
    """Any input yields exactly one Outcome kind; acks only on 2xx and only for ids of the batch."""
    outcome = classify(status, header_map, body, batch_event_ids=ids, now=now, truncated=truncated)
    assert isinstance(outcome, (Delivered, Split, Pause, Retry, DeadLetter))
    if isinstance(outcome, Delivered):
        assert isinstance(status, int) and 200 <= status <= 299 and not truncated
        assert set(outcome.delivered_ids) | set(outcome.rejected) == set(ids)
        assert not set(outcome.delivered_ids) & set(outcome.rejected)
    if isinstance(outcome, Retry) and outcome.retry_after is not None:
        assert outcome.retry_after >= 0
