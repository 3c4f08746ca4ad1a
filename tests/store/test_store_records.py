"""Properties of the record framing: round trips, resync past garbage, never a crash on any bytes."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.store.records import Damage, Record, body_if_intact, decode_run, encode_record

EXAMPLES = int(os.environ.get("AOP_STORE_EXAMPLES", "500" if os.environ.get("AOP_SOAK") else "60"))

events = st.tuples(
    st.text(min_size=1, max_size=40), st.text(max_size=40), st.integers(0, 2**64 - 1), st.binary(max_size=300),
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
)


def _enc(e) -> bytes:
    eid, rid, seq, body, ord_ns, at = e
    return encode_record(eid.encode(), rid.encode(), seq, body, ord_ns, at)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(events, max_size=8))
def test_encode_decode_round_trip(evs) -> None:
    """Decoding concatenated records returns every field, in order, with exact offsets."""
    raw = b"".join(_enc(e) for e in evs)
    res = decode_run(raw, base=100)
    assert not res.incomplete and res.consumed == len(raw)
    assert [(r.event_id, r.run_id, r.seq, raw[r.body_offset - 100 : r.body_offset - 100 + r.body_len], r.ord_ns, r.appended_at) for r in res.items] == [
        (e[0], e[1], e[2], e[3], e[4], e[5]) for e in evs
    ]
    for r in res.items:
        assert body_if_intact(raw[r.offset - 100 : r.offset - 100 + r.length], r.event_id.encode()) == raw[r.body_offset - 100 : r.body_offset - 100 + r.body_len]


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(events, min_size=1, max_size=6), st.binary(min_size=1, max_size=64), st.data())
def test_garbage_between_records_costs_only_itself(evs, garbage, data) -> None:
    """Garbage inserted between records is one Damage range; every record around it survives."""
    at = data.draw(st.integers(0, len(evs) - 1))  # trailing garbage is a torn tail, tested elsewhere
    parts = [_enc(e) for e in evs]
    raw = b"".join(parts[:at]) + garbage + b"".join(parts[at:])
    res = decode_run(raw)
    records = [i for i in res.items if type(i) is Record]
    assert [r.event_id for r in records] == [e[0] for e in evs]
    damage = [i for i in res.items if type(i) is Damage]
    assert sum(d.end - d.offset for d in damage) == len(garbage)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_decoder(raw) -> None:
    """Any byte string decodes into records/damage covering a prefix, or reports an incomplete tail."""
    res = decode_run(raw)
    covered = 0
    for item in res.items:
        assert item.offset == covered
        covered = item.end if type(item) is Damage else item.offset + item.length
    assert covered == res.consumed <= len(raw)
    assert res.incomplete or res.consumed == len(raw)
    assert body_if_intact(raw, b"x") is None or raw.startswith(b"\xaeAOP")
