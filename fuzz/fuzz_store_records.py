"""Fuzz harness: the store's segment decoder on damaged, truncated and hostile bytes.

Segment files are read back after crashes, disk errors and tampering, so their
decoder parses outside input. Invariants:

* ``decode_run`` never raises, whatever the bytes;
* every Record it returns verifies on its own (``verify_record``) and lies inside
  the buffer; Records and Damage are in file order, do not overlap, and stop at
  ``consumed`` (the rest may be a record still being written);
* every intact record that was written survives damage elsewhere in the run:
  flipping bytes inside one record loses that record at most.

Run longer: AOP_FUZZ_EXAMPLES=100000 python -m pytest fuzz/fuzz_store_records.py
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.store.records import Damage, Record, decode_run, encode_record, verify_record

FUZZ = settings(max_examples=int(os.environ.get("AOP_FUZZ_EXAMPLES", "200")), deadline=None)

ids = st.text(min_size=1, max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass"))
records = st.lists(
    st.tuples(ids, ids, st.integers(0, 2**64 - 1), st.binary(max_size=300)), min_size=1, max_size=8)


def encode_all(items) -> list[bytes]:
    """Frame each (event_id, run_id, seq, body) as the store writes it."""
    out = []
    for n, (event_id, run_id, seq, body) in enumerate(items):
        try:
            event_id.decode()
            run_id.decode()
        except UnicodeDecodeError:
            event_id, run_id = b"e%d" % n, b"r%d" % n
        out.append(encode_record(event_id, run_id, seq, body, ord_ns=n, appended_at=float(n)))
    return out


def check_structure(buf: bytes) -> list[Record]:
    """Assert the decoder's structural invariants on buf; return its records."""
    result = decode_run(buf)
    position = 0
    found = []
    for item in result.items:
        assert isinstance(item, (Record, Damage))
        start = item.offset
        end = item.offset + item.length if isinstance(item, Record) else item.end
        assert position <= start < end <= len(buf), (position, start, end, len(buf))
        position = end
        if isinstance(item, Record):
            again = verify_record(buf[item.offset:item.offset + item.length], item.offset)
            assert again is not None and again.event_id == item.event_id
            found.append(item)
    assert position <= result.consumed <= len(buf)
    return found


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_decoder(buf):
    """Random bytes decode to well-formed, self-verifying results or to nothing."""
    check_structure(buf)


@FUZZ
@given(records, st.data())
def test_damage_to_one_record_loses_at_most_that_record(items, data):
    """Flipping bytes inside one record leaves every other record decodable and intact."""
    framed = encode_all(items)
    victim = data.draw(st.integers(0, len(framed) - 1))
    damaged = bytearray(framed[victim])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(damaged) - 1))
        damaged[pos] ^= data.draw(st.integers(1, 255))
    buf = b"".join(framed[:victim] + [bytes(damaged)] + framed[victim + 1:])
    survivors = {(r.event_id, r.seq) for r in check_structure(buf)}
    for n, raw in enumerate(framed):
        if n != victim:
            rec = verify_record(raw)
            assert (rec.event_id, rec.seq) in survivors


@FUZZ
@given(records, st.data())
def test_truncation_never_invents_records(items, data):
    """A run cut anywhere yields only records that were written, all complete."""
    framed = encode_all(items)
    buf = b"".join(framed)
    cut = data.draw(st.integers(0, len(buf)))
    written = {(verify_record(raw).event_id, verify_record(raw).seq) for raw in framed}
    for record in check_structure(buf[:cut]):
        assert (record.event_id, record.seq) in written
