"""Tests of aop_client.flusher.Flusher over an in-memory store and scripted answers (protocol outcomes)."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import Counter

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_flusher_fakes import (
    DEAD,
    DELIVERED,
    FALLBACK,
    IN_FLIGHT,
    PENDING,
    MemoryStore,
    ScriptedTransport,
    SoloElection,
    event_body,
    ok_response,
)

from aop_client.core.backoff import RetryPolicy
from aop_client.flusher import Flusher
from aop_client.signing import signed_body
from aop_client.testing import wait_until
from aop_client.toon_parser import parse_toon
from aop_client.trace_builder import TraceBuilder
from aop_client.transport import Response

FAST = RetryPolicy(max_retries=3, base=0.01, cap=0.05)
SALT = "flusher-test-salt"


def filled_store(n: int, run_id: str = "run-1") -> tuple[MemoryStore, list[str]]:
    """A MemoryStore with n pending events and their ids."""
    store, ids = MemoryStore(), []
    for i in range(n):
        event_id, body = event_body(i, run_id)
        store.append(event_id, run_id, i + 1, body)
        ids.append(event_id)
    return store, ids


def batch_ids_of(body: bytes) -> list[str]:
    """The event ids inside one batch body."""
    return [e["event_id"] for e in orjson.loads(body)["events"]]


def make_flusher(store, transport, **kwargs) -> Flusher:
    """A Flusher with fast retries and a seeded jitter source."""
    import random

    kwargs.setdefault("retry_policy", FAST)
    return Flusher(store, transport, SoloElection(), rng=random.Random(7), **kwargs)


def test_flush_delivers_everything_in_batches_of_batch_size() -> None:
    """250 events with batch_size 100 go as three batches of 100, 100, 50, all acknowledged."""
    store, ids = filled_store(250)
    transport = ScriptedTransport()
    flusher = make_flusher(store, transport, batch_size=100)
    assert flusher.flush(timeout=10) is True
    assert [len(batch_ids_of(body)) for _, body, _ in transport.posts] == [100, 100, 50]
    assert [i for _, body, _ in transport.posts for i in batch_ids_of(body)] == ids
    assert store.states() == Counter({DELIVERED: 250}) and flusher.stats()["delivered"] == 250


def test_byte_cap_limits_batches() -> None:
    """With max_batch_bytes room for about three events, no batch body passes the cap."""
    store, _ = filled_store(20)
    size = len(event_body(0)[1])
    cap = 3 * size + 100
    transport = ScriptedTransport()
    assert make_flusher(store, transport, batch_size=100, max_batch_bytes=cap).flush(timeout=10)
    assert all(len(body) <= cap for _, body, _ in transport.posts) and len(transport.posts) >= 7
    assert store.states() == Counter({DELIVERED: 20})


def test_retry_keeps_the_batch_id_and_acks_only_after_2xx() -> None:
    """503, timeout, 429 then 200: four posts with one Idempotency-Key; the ack follows the 200 only."""
    store, ids = filled_store(5)
    acked_during: list[Counter] = []

    def answer(status):
        def reply(body: bytes) -> Response:
            acked_during.append(store.states())
            return Response(status, {"retry-after": "0"}) if status else Response(None, error="read timeout")
        return reply

    transport = ScriptedTransport([answer(503), answer(None), answer(429)])
    flusher = make_flusher(store, transport, retry_policy=RetryPolicy(max_retries=5, base=0.01, cap=0.02))
    assert flusher.flush(timeout=10)
    assert len({batch_id for batch_id, _, _ in transport.posts}) == 1 and len(transport.posts) == 4
    assert all(c[DELIVERED] == 0 for c in acked_during)
    assert store.states() == Counter({DELIVERED: 5}) and flusher.stats()["retried"] == 3


def test_retry_after_delays_the_next_attempt() -> None:
    """A 503 with Retry-After: 1 (cap 5) makes the next attempt wait at least about a second."""
    store, _ = filled_store(1)
    stamps: list[float] = []

    def reply(body: bytes) -> Response:
        stamps.append(time.monotonic())
        return Response(503, {"retry-after": "1"}) if len(stamps) == 1 else ok_response(body)

    flusher = make_flusher(store, ScriptedTransport([reply, reply]), retry_policy=RetryPolicy(3, 0.0, 5.0))
    assert flusher.flush(timeout=10)
    assert stamps[1] - stamps[0] >= 0.95


@settings(max_examples=int(os.environ.get("AOP_HYPOTHESIS_EXAMPLES", "30")), deadline=None)
@given(st.integers(1, 40), st.data())
def test_400_and_413_splitting_isolates_bad_events(n: int, data) -> None:
    """Batches holding bad events get 400 or 413 until halved down; bad ones dead-letter, the rest deliver."""
    store, ids = filled_store(n)
    bad = set(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    status = data.draw(st.sampled_from([400, 413]))

    def reply(body: bytes) -> Response:
        return Response(status, {}, b"bad event") if bad & set(batch_ids_of(body)) else ok_response(body)

    transport = ScriptedTransport([reply] * 1000)
    flusher = make_flusher(store, transport, batch_size=64)
    flusher.flush(timeout=20)
    assert {i for i in ids if store.state_of(i) == DEAD} == bad
    assert {i for i in ids if store.state_of(i) == DELIVERED} == set(ids) - bad
    assert flusher.stats()["dead_letters"] == len(bad)


def test_partial_rejections_go_to_dead_letters_with_reason() -> None:
    """A 200 rejecting one event dead-letters it with the server's reason and acks the others."""
    store, ids = filled_store(4)

    def reply(body: bytes) -> Response:
        doc = {"accepted": 3, "duplicates": 1, "rejected": [{"event_id": ids[2], "reason": "bad signature"}]}
        return Response(200, {}, orjson.dumps(doc))

    flusher = make_flusher(store, ScriptedTransport([reply]))
    flusher.flush(timeout=10)
    assert [store.state_of(i) for i in ids] == [DELIVERED, DELIVERED, DEAD, DELIVERED]
    assert store.dead_letters()[0].reason == "bad signature"
    assert flusher.stats()["duplicates"] == 1


def test_401_pauses_without_loss_and_reports() -> None:
    """401s keep every event in flight (never dead or acked), set paused and last_error; a 200 resumes."""
    store, _ = filled_store(3)
    gate = threading.Event()

    def refused(body: bytes) -> Response:
        if gate.is_set():
            return ok_response(body)
        return Response(401, {}, b"bad key")

    flusher = make_flusher(store, ScriptedTransport([refused] * 100), retry_policy=RetryPolicy(1, 0.01, 0.02),
                           batch_interval=0.0)
    flusher.start()
    try:
        wait_until(lambda: flusher.stats()["paused_answers"] >= 3, timeout=10)
        stats = flusher.stats()
        assert stats["paused"] is True and "401" in stats["last_error"]
        assert store.states()[DEAD] == 0 and store.states()[DELIVERED] == 0 and store.states()[FALLBACK] == 0
        gate.set()
        wait_until(lambda: store.states() == Counter({DELIVERED: 3}), timeout=10)
        assert flusher.stats()["paused"] is False
    finally:
        assert flusher.stop(timeout=5)


def real_events(n: int) -> tuple[TraceBuilder, list[tuple[str, bytes]]]:
    """n real, signed custom events of one run (as the client would store them)."""
    builder = TraceBuilder(agent_id=42)
    out = []
    for i in range(n):
        event = builder.create_custom("step", {"i": i})
        out.append((event["event_id"], signed_body(event, SALT)[1]))
    return builder, out


def test_exhausted_batches_park_in_fallback_and_write_a_private_file(tmp_path) -> None:
    """After max_retries 503s the events are in fallback, a 0600 fallback file (0700 dir) parse_toon can read exists."""
    builder, events = real_events(3)
    store = MemoryStore()
    for seq, (event_id, body) in enumerate(events, 1):
        store.append(event_id, builder.run_id, seq, body)
    fallback_dir = tmp_path / "fallback"
    transport = ScriptedTransport([Response(503)] * 3)
    flusher = make_flusher(store, transport, fallback_dir=str(fallback_dir))
    flusher.flush(timeout=10)
    assert store.states() == Counter({FALLBACK: 3}) and len(transport.posts) == 3
    files = list(fallback_dir.iterdir())
    assert len(files) == 1 and files[0].name.startswith(f"fallback_{builder.run_id}_") and files[0].suffix == ".json"
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600 and stat.S_IMODE(fallback_dir.stat().st_mode) == 0o700
    doc = orjson.loads(files[0].read_bytes())
    assert doc["run_id"] == builder.run_id and doc["event_count"] == 3
    assert doc["metadata"]["agent_id"] == 42 and doc["metadata"]["reason"] == "max_retries"
    assert [e["event_id"] for e in parse_toon(files[0].read_bytes())] == [e for e, _ in events]
    assert SALT not in files[0].read_text()
    assert flusher.flush(timeout=10) is True  # the next flush retries the parked events
    assert store.states() == Counter({DELIVERED: 3})


def test_hooks_run_per_event_and_a_raising_hook_never_stops_delivery() -> None:
    """pre_send sees every event before the post; post_send gets success flags; raising hooks are counted."""
    store, ids = filled_store(4)
    seen_pre, seen_post = [], []

    def pre(event: dict) -> None:
        seen_pre.append(event["event_id"])
        raise RuntimeError("pre hook broke")

    def post(event: dict, success: bool) -> None:
        seen_post.append((event["event_id"], success))
        event["payload"] = "mutated"  # must not matter
        raise ValueError("post hook broke")

    def reply(body: bytes) -> Response:
        return Response(200, {}, orjson.dumps({"accepted": 3, "rejected": [{"event_id": ids[0], "reason": "x"}]}))

    flusher = make_flusher(store, ScriptedTransport([reply]), pre_send_hook=pre, post_send_hook=post)
    flusher.flush(timeout=10)
    assert seen_pre == ids
    assert sorted(seen_post) == sorted([(ids[0], False)] + [(i, True) for i in ids[1:]])
    assert flusher.stats()["hook_errors"] == 8
    assert [store.state_of(i) for i in ids] == [DEAD, DELIVERED, DELIVERED, DELIVERED]


def test_stop_is_bounded_while_the_server_hangs_and_acks_nothing() -> None:
    """With the server hanging, stop(0.5) returns about on time, False, and nothing is acknowledged."""
    store, _ = filled_store(10)
    entered, release = threading.Event(), threading.Event()

    def hang(body: bytes) -> Response:
        entered.set()
        release.wait(30)
        return Response(None, error="read timeout")

    flusher = make_flusher(store, ScriptedTransport([hang]), batch_interval=0.0)
    flusher.start()
    assert entered.wait(10)
    started = time.monotonic()
    assert flusher.stop(timeout=0.5) is False
    assert time.monotonic() - started < 1.0
    assert store.states()[DELIVERED] == 0
    release.set()
    wait_until(lambda: store.states() == Counter({PENDING: 10}), timeout=10)  # released for the next flusher


def test_stop_during_backoff_releases_the_batch_promptly() -> None:
    """A flusher sleeping a long backoff stops at once and its events return to pending, attempts counted."""
    store, _ = filled_store(3)
    flusher = make_flusher(store, ScriptedTransport([Response(503)]), batch_interval=0.0,
                           retry_policy=RetryPolicy(5, 60.0, 60.0))
    flusher.start()
    wait_until(lambda: flusher.stats()["retried"] == 1, timeout=10)
    started = time.monotonic()
    assert flusher.stop(timeout=5, flush=False) is True
    assert time.monotonic() - started < 1.0
    assert store.states() == Counter({PENDING: 3}) and all(r["attempts"] == 1 for r in store.rows.values())


def test_a_fenced_flusher_steps_down_without_acking() -> None:
    """If another leader begins an epoch mid-send, the old flusher's ack is refused and it steps down."""
    store, _ = filled_store(2)

    election = SoloElection()

    def usurp(body: bytes) -> Response:
        election.winnable = False  # another process holds the election now ...
        store.begin_epoch()  # ... and has started its epoch
        return ok_response(body)

    import random

    flusher = Flusher(store, ScriptedTransport([usurp]), election, rng=random.Random(1), batch_interval=0.0)
    flusher.start()
    try:
        wait_until(lambda: flusher.stats()["fenced"] >= 1, timeout=10)
        assert store.acks == [] and not flusher.is_leader  # the deposed flusher acknowledged nothing
        assert store.states() == Counter({PENDING: 2})  # the new epoch took the leases back
        election.winnable = True  # the other leader went away
        wait_until(lambda: store.states() == Counter({DELIVERED: 2}), timeout=10)  # re-elected, redelivered
    finally:
        flusher.stop(timeout=5)


def test_wakeup_sends_a_full_batch_before_the_interval() -> None:
    """With batch_interval 60 s, batch_size events plus wakeup() are delivered within a second or two."""
    store = MemoryStore()
    transport = ScriptedTransport()
    flusher = make_flusher(store, transport, batch_size=10, batch_interval=60.0)
    flusher.start()
    try:
        wait_until(lambda: flusher.is_leader, timeout=5)
        for i in range(10):
            store.append(*event_body(i)[:1], "run-1", i + 1, event_body(i)[1])
        flusher.wakeup()
        wait_until(lambda: store.states() == Counter({DELIVERED: 10}), timeout=3)
        assert len(transport.posts) == 1
    finally:
        flusher.stop(timeout=5)


def test_small_batches_wait_for_batch_interval() -> None:
    """Three events with batch_size 100 and batch_interval 0.3 s go as one batch after about the interval."""
    store = MemoryStore()
    transport = ScriptedTransport()
    flusher = make_flusher(store, transport, batch_size=100, batch_interval=0.3)
    flusher.start()
    try:
        wait_until(lambda: flusher.is_leader, timeout=5)
        started = time.monotonic()
        for i in range(3):
            store.append(*event_body(i)[:1], "run-1", i + 1, event_body(i)[1])
        wait_until(lambda: store.states() == Counter({DELIVERED: 3}), timeout=5)
        assert time.monotonic() - started >= 0.25 and len(transport.posts) == 1
    finally:
        flusher.stop(timeout=5)


def test_not_elected_flusher_never_touches_the_store() -> None:
    """A flusher that cannot win the election leases and sends nothing."""
    store, _ = filled_store(3)
    transport = ScriptedTransport()
    import random

    flusher = Flusher(store, transport, SoloElection(winnable=False), rng=random.Random(1), election_poll=0.01)
    flusher.start()
    try:
        assert flusher.flush(timeout=0.3) is False
        assert store.states() == Counter({PENDING: 3}) and transport.posts == [] and not flusher.is_leader
    finally:
        started = time.monotonic()
        assert flusher.stop(timeout=2) is False  # stopped, but the store still holds undelivered events
        assert time.monotonic() - started < 1.0


def test_stats_and_repr_hold_no_secrets() -> None:
    """repr(flusher) and stats() never contain the transport's keys."""
    from aop_client.transport import HttpTransport

    transport = HttpTransport("http://127.0.0.1:1", "secret-api", "secret-salt")
    flusher = Flusher(MemoryStore(), transport, SoloElection())
    assert "secret" not in repr(flusher) and "secret" not in repr(flusher.stats())


def test_parked_events_are_retried_every_fallback_interval() -> None:
    """Without any flush request, a running leader retries fallback events after fallback_retry_interval."""
    store, _ = filled_store(3)
    transport = ScriptedTransport([Response(503)] * 3)
    flusher = make_flusher(store, transport, batch_interval=0.0, fallback_retry_interval=0.2)
    flusher.start()
    try:
        wait_until(lambda: flusher.stats()["fallback"] == 3, timeout=10)
        wait_until(lambda: store.states() == Counter({DELIVERED: 3}), timeout=10)
        assert len(transport.posts) == 4
    finally:
        flusher.stop(timeout=5)


def test_stop_right_after_start_still_delivers_what_is_stored() -> None:
    """start() then stop() at once (batch_interval 60 s): the final drain sends everything and stop returns True."""
    store, _ = filled_store(5)
    flusher = make_flusher(store, ScriptedTransport(), batch_interval=60.0).start()
    assert flusher.stop(timeout=5) is True
    assert store.states() == Counter({DELIVERED: 5})


answers = st.sampled_from(["ok", "reject_first", "503", "429", "timeout", "garbage_200", "400", "413", "404", "401"])


@settings(max_examples=int(os.environ.get("AOP_HYPOTHESIS_EXAMPLES", "40")), deadline=None)
@given(st.integers(1, 30), st.integers(1, 12), st.lists(answers, max_size=25), st.integers(1, 4))
def test_real_loop_under_random_answers_acks_only_after_2xx_and_loses_nothing(n, batch_size, script, retries) -> None:
    """The real Flusher over random answers: every event ends in one state, acks only for events a 2xx accepted."""
    store, ids = filled_store(n)

    def reply_for(kind: str):
        def reply(body: bytes) -> Response:
            batch = batch_ids_of(body)
            if kind == "ok":
                return ok_response(body)
            if kind == "reject_first":
                return Response(200, {}, orjson.dumps({"accepted": len(batch) - 1,
                                                       "rejected": [{"event_id": batch[0], "reason": "no"}]}))
            if kind == "timeout":
                return Response(None, error="timeout")
            if kind == "garbage_200":
                return Response(200, {}, b"<html>")
            return Response(int(kind), {"retry-after": "0"}, b"")
        return reply

    pauses_left = [3]

    def limited(kind: str):
        inner = reply_for(kind)
        if kind != "401":
            return inner

        def reply(body: bytes) -> Response:  # a bounded outage of credentials, then the server accepts again
            pauses_left[0] -= 1
            return inner(body) if pauses_left[0] >= 0 else ok_response(body)
        return reply

    transport = ScriptedTransport([limited(k) for k in script])
    flusher = make_flusher(store, transport, batch_size=batch_size,
                           retry_policy=RetryPolicy(max_retries=retries, base=0.0, cap=0.0))
    flusher.flush(timeout=20)
    accepted_by_2xx = set()
    for _, body, response in transport.posts:
        if response.status is not None and 200 <= response.status < 300 and response.body.startswith(b"{"):
            rejected = {r["event_id"] for r in orjson.loads(response.body).get("rejected", [])}
            accepted_by_2xx |= set(batch_ids_of(body)) - rejected
    states = {i: store.state_of(i) for i in ids}
    assert {i for i, s in states.items() if s == DELIVERED} <= accepted_by_2xx
    assert set(states.values()) <= {DELIVERED, DEAD, FALLBACK, PENDING}  # nothing in flight after a flush
    assert len(store.rows) == n  # nothing lost, nothing duplicated in the store
    assert store.states()[PENDING] == 0


def test_forked_child_gets_a_fresh_flusher_even_if_a_parent_thread_held_its_lock() -> None:
    """Fork while a parent thread holds the flusher's lock: the child's stats/stop return at once, not leader."""
    store, _ = filled_store(2)
    flusher = make_flusher(store, ScriptedTransport(), batch_interval=0.0)
    with flusher._lock:  # as if another thread were inside stats() at fork time
        pid = os.fork()
        if pid == 0:  # the child: must not deadlock, must not believe it leads
            try:
                ok = flusher.stats()["is_leader"] is False and flusher._thread is None
                ok = ok and flusher.stop(timeout=1.0, flush=False) is True
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
    reaped = None
    try:
        reaped = wait_until(lambda: (lambda r: r if r[0] else None)(os.waitpid(pid, os.WNOHANG)), timeout=10)
    finally:
        if reaped is None:  # a hung child is a failure; never leave it behind
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(reaped[1]) == 0


def test_flush_timing_out_never_runs_two_drains_at_once() -> None:
    """A flush() stuck in a hanging POST times out; a second flush() waits for that drain instead of starting another."""
    store, _ = filled_store(4)
    entered, release = threading.Event(), threading.Event()

    def hang(body: bytes) -> Response:
        entered.set()
        release.wait(30)
        return ok_response(body)

    transport = ScriptedTransport([hang])
    flusher = make_flusher(store, transport)
    assert flusher.flush(timeout=0.3) is False and entered.is_set()
    assert flusher.flush(timeout=0.3) is False
    assert len(transport.posts) == 0  # the first POST is still hanging; no second drain posted anything
    release.set()
    wait_until(lambda: store.states() == Counter({DELIVERED: 4}), timeout=10)
    assert len(transport.posts) == 1


@pytest.mark.parametrize("kwargs, field", [({"batch_size": 0}, "batch_size"), ({"batch_interval": -1.0}, "batch_interval"),
                                           ({"max_batch_bytes": 0}, "max_batch_bytes"),
                                           ({"election_poll": 0.0}, "election_poll")])
def test_bad_settings_raise_config_error(kwargs: dict, field: str) -> None:
    """Bad flusher settings raise ConfigError naming the field."""
    from aop_client.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        Flusher(MemoryStore(), ScriptedTransport(), SoloElection(), **kwargs)
    assert info.value.field == field
