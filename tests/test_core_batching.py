"""Tests of aop_client.core.batching: flush decisions, batch bodies, halving."""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.core.batching import batch_overhead_bytes, build_batch_body, should_flush, split_in_halves
from aop_client.errors import ValidationError

EXAMPLES = settings(max_examples=int(os.environ.get("AOP_HYPOTHESIS_EXAMPLES", "200")), deadline=None)
events = st.lists(
    st.fixed_dictionaries({"event_id": st.uuids().map(str), "seq": st.integers(1, 10**6), "x": st.text(max_size=30)}),
    max_size=20,
)


@EXAMPLES
@given(events, st.uuids().map(str))
def test_batch_body_is_the_protocol_document(docs: list[dict], batch_id: str) -> None:
    """The built body parses to {"batch_id", "events"} with the stored events unchanged and in order."""
    bodies = [orjson.dumps(d) for d in docs]
    body = build_batch_body(batch_id, bodies)
    assert orjson.loads(body) == {"batch_id": batch_id, "events": docs}
    assert len(body) == sum(map(len, bodies)) + batch_overhead_bytes(batch_id, len(bodies))


def test_batch_body_escapes_the_batch_id() -> None:
    """A batch id with quotes cannot break out of its JSON string."""
    body = build_batch_body('a"b', [b'{"k":1}'])
    assert orjson.loads(body)["batch_id"] == 'a"b'


@pytest.mark.parametrize("bodies", [[b""], ["text"], [None]])
def test_batch_body_refuses_non_bytes_events(bodies: list) -> None:
    """An empty or non-bytes stored body is a ValidationError naming its position."""
    with pytest.raises(ValidationError) as info:
        build_batch_body("b", bodies)
    assert info.value.field == "events[0]"


@EXAMPLES
@given(st.lists(st.integers(), min_size=2, max_size=200))
def test_halves_are_non_empty_and_rejoin_to_the_batch(items: list[int]) -> None:
    """split_in_halves gives two non-empty halves, sizes differing by at most one, rejoining in order."""
    first, second = split_in_halves(items)
    assert first and second and abs(len(first) - len(second)) <= 1
    assert list(first) + list(second) == items


@EXAMPLES
@given(st.lists(st.booleans(), min_size=1, max_size=64))
def test_repeated_halving_isolates_every_bad_event(bad_flags: list[bool]) -> None:
    """Halving any batch that contains a bad event ends with each bad event alone and no good one lost."""
    pending = [list(enumerate(bad_flags))]
    isolated_bad, delivered = [], []
    while pending:
        batch = pending.pop()
        if not any(bad for _, bad in batch):
            delivered.extend(batch)
        elif len(batch) == 1:
            isolated_bad.extend(batch)
        else:
            pending.extend(map(list, split_in_halves(batch)))
    assert sorted(i for i, _ in isolated_bad) == [i for i, bad in enumerate(bad_flags) if bad]
    assert sorted(i for i, _ in delivered) == [i for i, bad in enumerate(bad_flags) if not bad]


def test_single_event_cannot_be_split() -> None:
    """Splitting fewer than two events is a ValidationError."""
    with pytest.raises(ValidationError):
        split_in_halves([1])


@EXAMPLES
@given(
    st.integers(0, 1000), st.integers(0, 10**7), st.one_of(st.none(), st.floats(0, 100)),
    st.floats(0, 200), st.integers(1, 500), st.integers(1, 10**7), st.floats(0, 60), st.booleans(),
)
def test_should_flush_rules(count, total, oldest, now, batch_size, max_bytes, interval, force) -> None:
    """Ready iff non-empty and (forced, full by count, near the byte cap, or the oldest waited the interval)."""
    ready = should_flush(count, total, oldest, now, batch_size=batch_size, max_batch_bytes=max_bytes,
                         batch_interval=interval, force=force)
    if count == 0:
        assert ready is False
        return
    expected = (force or count >= batch_size or total + total / count > max_bytes
                or (oldest is not None and now - oldest >= interval))
    assert ready == expected


def test_should_flush_waits_for_the_interval() -> None:
    """A small young batch waits; the same batch is ready once batch_interval has passed."""
    kwargs = dict(batch_size=100, max_batch_bytes=10**6, batch_interval=5.0)
    assert not should_flush(3, 900, 100.0, 104.9, **kwargs)
    assert should_flush(3, 900, 100.0, 105.0, **kwargs)
