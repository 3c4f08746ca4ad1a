"""What docs/security.md says about replayed requests holds at the reference collector.

A captured batch request verifies while its X-AOP-Signature ``t`` is within
+-300 s of the server's clock (so for up to 600 s when the client's clock ran
ahead); a replay inside that window is harmless (every event a duplicate,
nothing stored twice), and outside it the request is refused with 401.
"""

from __future__ import annotations

import time

from collector_helpers import batch_body, make_run, post

BATCH = "/api/v1/traces/batch"


def test_a_replayed_request_inside_the_window_only_yields_duplicates(aop_collector) -> None:
    """The same signed request sent again (client clock 290 s ahead) is accepted as duplicates only."""
    run_id, events = make_run(3, aop_collector.org_salt_key)
    batch_id, body = batch_body(events)
    signed_at = time.time() + 290  # the client's clock runs ahead: the window stays open ~590 s
    first = post(aop_collector, BATCH, body, sig_now=signed_at, headers={"Idempotency-Key": batch_id})
    replay = post(aop_collector, BATCH, body, sig_now=signed_at, headers={"Idempotency-Key": batch_id})
    assert (first[0], first[1]) == (200, {"accepted": 3, "duplicates": 0, "rejected": []})
    assert (replay[0], replay[1]) == (200, {"accepted": 0, "duplicates": 3, "rejected": []})
    assert aop_collector.events(run_id) == events  # stored once


def test_a_request_signed_outside_the_window_is_refused(aop_collector) -> None:
    """A request whose t is more than 300 s from the server's clock gets 401 and stores nothing."""
    run_id, events = make_run(2, aop_collector.org_salt_key)
    batch_id, body = batch_body(events)
    for offset in (-310, 310):
        status, answer, _ = post(aop_collector, BATCH, body, sig_now=time.time() + offset,
                                 headers={"Idempotency-Key": batch_id})
        assert status == 401 and "stale" in str(answer)
    assert aop_collector.events(run_id) == []
