"""TraceBuilder: payload shapes, gap-free seq numbering (also across threads), copies and export."""

from __future__ import annotations

import json
import math
import sys
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import strategies as S  # noqa: E402

from aop_client.errors import ValidationError  # noqa: E402
from aop_client.events import validate_event  # noqa: E402
from aop_client.trace_builder import TraceBuilder  # noqa: E402

RUN_ID = "550e8400-e29b-41d4-a716-446655440000"


def _fixed_clock(value=1764928800.0):
    return lambda: value


def test_brief_quick_start_calls_produce_numbered_events():
    """The README's Quick Start create_* calls run as written and number events 1, 2, 3."""
    builder = TraceBuilder(123, clock=_fixed_clock())
    first = builder.create_reasoning(
        goal="Process customer refund request",
        steps=[{"step_id": "s1", "description": "Validate order ID", "decision": "proceed", "confidence": 0.95}],
        safety_checks=[{"name": "policy_check", "result": "passed"}],
        uncertainty="low",
    )
    second = builder.create_action_request(action="create_ticket", params={"order_id": "ORD-123", "reason": "defect"})
    third = builder.create_final_output(text="Ticket T-999 created successfully", structured={"ticket_id": "T-999"})
    assert [first["seq"], second["seq"], third["seq"]] == [1, 2, 3]
    assert first["payload"] == {
        "goal": "Process customer refund request",
        "steps": [{"step_id": "s1", "description": "Validate order ID", "decision": "proceed", "confidence": 0.95}],
        "safety_checks": [{"name": "policy_check", "result": "passed"}],
        "uncertainty": "low",
    }
    assert second["payload"] == {"action": "create_ticket", "params": {"order_id": "ORD-123", "reason": "defect"}}
    assert third["payload"] == {"text": "Ticket T-999 created successfully", "structured": {"ticket_id": "T-999"}}
    for event in (first, second, third):
        assert event["agent_id"] == 123 and event["run_id"] == builder.run_id
        assert event["t"] == "2025-12-05T10:00:00.000Z" and "sig" not in event
        validate_event(event)


def test_brief_active_mode_calls_run_as_written():
    """The Active Mode snippet's calls (empty steps, text only) produce valid events."""
    builder = TraceBuilder(123)
    event1 = builder.create_reasoning(goal="Analyze query", steps=[], safety_checks=[], uncertainty="low")
    event2 = builder.create_final_output(text="Analysis complete")
    assert event1["payload"]["steps"] == [] and event2["payload"] == {"text": "Analysis complete"}
    assert [e["seq"] for e in builder.get_events()] == [1, 2]


def test_error_custom_and_response_payload_shapes():
    """create_error (also from an exception), create_custom and create_action_response build documented shapes."""
    builder = TraceBuilder(1, RUN_ID)
    assert builder.create_error("boom", error_type="Timeout", details={"after_s": 5})["payload"] == {
        "message": "boom", "error_type": "Timeout", "details": {"after_s": 5}}
    assert builder.create_error(KeyError("k"))["payload"] == {"message": "'k'", "error_type": "KeyError"}
    custom = builder.create_custom("cache_hit", {"key": "a"})
    assert (custom["name"], custom["payload"]) == ("cache_hit", {"key": "a"})  # protocol v1 section 1
    assert builder.create_action_response("ok", data=[1, 2], meta={"latency_ms": 245})["payload"] == {
        "status": "ok", "data": [1, 2], "meta": {"latency_ms": 245}}
    assert [e["type"] for e in builder.get_events()] == ["error", "error", "custom", "action_response"]


INVALID_CALLS = [
    ("create_reasoning", dict(goal="g", steps=[{"confidence": 1.5}]), "payload.steps[0].confidence"),
    ("create_reasoning", dict(goal="g", steps=[{"confidence": -0.01}]), "payload.steps[0].confidence"),
    ("create_reasoning", dict(goal="g", steps=[{}, {"confidence": math.nan}]), "payload.steps[1].confidence"),
    ("create_reasoning", dict(goal="g", steps=[{"confidence": True}]), "payload.steps[0].confidence"),
    ("create_reasoning", dict(goal="g", uncertainty="extreme"), "payload.uncertainty"),
    ("create_reasoning", dict(goal=""), "payload.goal"),
    ("create_reasoning", dict(goal="g", steps="s1"), "payload.steps"),
    ("create_reasoning", dict(goal="g", safety_checks=[{"r": {1, 2}}]), "payload.safety_checks[0].r"),
    ("create_reasoning", dict(goal="g", note=b"x"), "payload.note"),
    ("create_action_request", dict(action="a", params={"q": math.inf}), "payload.params.q"),
    ("create_action_request", dict(action="a", params=["q"]), "payload.params"),
    ("create_action_request", dict(action=5), "payload.action"),
    ("create_action_response", dict(status="ok", data={"n": 2**60}), "payload.data.n"),
    ("create_final_output", dict(text="t", structured={"k": {3: "v"}}), "payload.structured.k[3]"),
    ("create_error", dict(message="m", details={"x": float("nan")}), "payload.details.x"),
    ("create_custom", dict(name="n", data={"b": bytearray(b"1")}), "payload.b"),
    ("create_custom", dict(name="n", data=[1]), "payload"),
    ("create_custom", dict(name="", data={}), "name"),
    ("create_custom", dict(name="n", data={"n": 2**53}), "payload.n"),
]


@pytest.mark.parametrize("method,kwargs,field", INVALID_CALLS, ids=[c[2] + ":" + c[0] for c in INVALID_CALLS])
def test_invalid_input_raises_validation_error_naming_the_path_and_takes_no_seq(method, kwargs, field):
    """Invalid input raises ValidationError naming the field path; the seq is not consumed."""
    builder = TraceBuilder(1, RUN_ID)
    with pytest.raises(ValidationError) as info:
        getattr(builder, method)(**kwargs)
    assert info.value.field == field and field in str(info.value)
    assert builder.next_seq == 1 and builder.get_events() == []
    assert builder.create_custom("after")["seq"] == 1


def test_oversized_event_is_refused_without_consuming_a_seq():
    """An event above max_event_bytes raises ValidationError and the next event still gets seq 1."""
    builder = TraceBuilder(1, RUN_ID, max_event_bytes=500)
    with pytest.raises(ValidationError, match="max_event_bytes=500"):
        builder.create_final_output("x" * 600)
    assert builder.create_final_output("small")["seq"] == 1


@pytest.mark.parametrize("kwargs,field", [
    (dict(agent_id="123"), "agent_id"), (dict(agent_id=True), "agent_id"),
    (dict(agent_id=1, run_id="run-1"), "run_id"), (dict(agent_id=1, max_event_bytes=0), "max_event_bytes"),
])
def test_constructor_rejects_bad_arguments(kwargs, field):
    """Bad agent_id, run_id or max_event_bytes raise ValidationError naming the argument."""
    with pytest.raises(ValidationError) as info:
        TraceBuilder(**kwargs)
    assert info.value.field == field


def test_documentation_placeholders_are_accepted():
    """A ``...`` placeholder in arguments (as in the brief's snippets) becomes the string "..."."""
    builder = TraceBuilder(1)
    assert builder.create_reasoning(...)["payload"]["goal"] == "..."
    assert builder.create_action_response("ok", data={"results": [...]})["payload"]["data"] == {"results": ["..."]}


def test_builder_copies_inputs_and_outputs():
    """Mutating the caller's arguments or returned events never changes the recorded trace."""
    params = {"ids": [1, 2]}
    builder = TraceBuilder(1, RUN_ID)
    returned = builder.create_action_request("lookup", params=params)
    params["ids"].append(3)
    returned["payload"]["params"]["ids"].append(4)
    builder.get_events()[0]["payload"]["params"]["ids"].append(5)
    assert builder.get_events()[0]["payload"]["params"] == {"ids": [1, 2]}


def test_new_run_resets_seq_and_events():
    """new_run starts a fresh run id, clears the trace and numbers from 1 again."""
    builder = TraceBuilder(1, RUN_ID)
    builder.create_custom("a")
    builder.create_custom("b")
    new_id = builder.new_run()
    assert new_id == builder.run_id != RUN_ID and uuid.UUID(new_id).version == 4
    assert builder.get_events() == [] and builder.next_seq == 1
    assert builder.create_custom("c")["seq"] == 1 and builder.create_custom("c")["run_id"] == new_id
    with pytest.raises(ValidationError):
        builder.new_run("nope")


def test_export_trace_json_compact_and_pretty_hold_the_same_events():
    """export_trace_json is compact by default, indented when pretty, and both load to export_trace()."""
    builder = TraceBuilder(7, RUN_ID)
    builder.create_reasoning("g", steps=[{"confidence": 0.5}])
    builder.create_final_output("ok")
    compact, pretty = builder.export_trace_json(), builder.export_trace_json(pretty=True)
    assert "\n" not in compact and "\n  " in pretty
    assert json.loads(compact) == json.loads(pretty) == builder.export_trace() == builder.get_events()


def test_repr_shows_no_payload_data():
    """repr names agent, run and next seq only."""
    builder = TraceBuilder(9, RUN_ID)
    builder.create_final_output("secret text")
    assert repr(builder) == f"TraceBuilder(agent_id=9, run_id='{RUN_ID}', next_seq=2)"


CREATORS = st.sampled_from([
    lambda b: b.create_reasoning("g"),
    lambda b: b.create_action_request("a", {"k": 1}),
    lambda b: b.create_action_response("ok"),
    lambda b: b.create_final_output("done"),
    lambda b: b.create_error("bad"),
    lambda b: b.create_custom("c", {"v": [1]}),
])


@S.PROPERTY_SETTINGS
@given(st.lists(CREATORS, max_size=30))
def test_seq_is_one_to_n_for_any_sequence_of_creations(creators):
    """Any sequence of create_* calls yields seq 1..N in order with unique event ids."""
    builder = TraceBuilder(1, RUN_ID)
    returned = [create(builder) for create in creators]
    assert [e["seq"] for e in returned] == list(range(1, len(creators) + 1))
    assert builder.get_events() == returned
    assert len({e["event_id"] for e in returned}) == len(returned)


@S.PROPERTY_SETTINGS
@given(st.integers(min_value=2, max_value=8), st.integers(min_value=1, max_value=60))
def test_seq_has_no_gaps_or_duplicates_under_threads(threads, per_thread):
    """N threads creating events concurrently get exactly seqs 1..total, each thread's in increasing order."""
    builder = TraceBuilder(1, RUN_ID)
    start = threading.Barrier(threads)
    seen: dict[int, list[int]] = {}

    def work(index: int) -> None:
        start.wait()
        seen[index] = [builder.create_custom(f"t{index}", {"i": i})["seq"] for i in range(per_thread)]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    all_seqs = sorted(s for seqs in seen.values() for s in seqs)
    assert all_seqs == list(range(1, threads * per_thread + 1))
    assert all(seqs == sorted(seqs) for seqs in seen.values())
    assert [e["seq"] for e in builder.get_events()] == all_seqs


class TraceBuilderMachine(RuleBasedStateMachine):
    """Model: a counter per run; invalid calls and new_run must keep the seq invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.builder = TraceBuilder(5, RUN_ID)
        self.expected_count = 0
        self.run_ids = [RUN_ID]

    @rule(create=CREATORS)
    def create_valid(self, create):
        """A valid creation takes the next seq."""
        event = create(self.builder)
        self.expected_count += 1
        assert event["seq"] == self.expected_count

    @rule(confidence=st.floats().filter(lambda c: not 0 <= c <= 1))
    def create_invalid(self, confidence):
        """An invalid creation raises and takes no seq."""
        with pytest.raises(ValidationError):
            self.builder.create_reasoning("g", steps=[{"confidence": confidence}])

    @precondition(lambda self: self.expected_count > 0)
    @rule()
    def start_new_run(self):
        """new_run restarts numbering under a fresh run id."""
        self.run_ids.append(self.builder.new_run())
        self.expected_count = 0

    @invariant()
    def seqs_are_gap_free_and_in_one_run(self):
        """The recorded trace is seq 1..count of the current run, and next_seq follows it."""
        events = self.builder.get_events()
        assert [e["seq"] for e in events] == list(range(1, self.expected_count + 1))
        assert all(e["run_id"] == self.builder.run_id == self.run_ids[-1] for e in events)
        assert self.builder.next_seq == self.expected_count + 1
        assert len(set(self.run_ids)) == len(self.run_ids)


TestTraceBuilderMachine = TraceBuilderMachine.TestCase
TestTraceBuilderMachine.settings = S.PROPERTY_SETTINGS


def test_bad_clock_value_raises_and_takes_no_seq():
    """A clock returning NaN raises ValidationError on field t and the seq stays free."""
    times = iter([math.nan, 1764928800.0])
    builder = TraceBuilder(1, RUN_ID, clock=lambda: next(times))
    with pytest.raises(ValidationError) as info:
        builder.create_custom("x")
    assert info.value.field == "t"
    assert builder.create_custom("y")["seq"] == 1
