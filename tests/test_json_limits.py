"""The protocol's JSON value limits hold in one place for every path: builders, emit, signing, TOON, collector.

Issue 12 part 9: 10,000 levels of nesting raised RecursionError (emit, signing,
the hook copy) instead of ValidationError, and the builders accepted 2**53 that
emit_event then refused. aop_client.protocol now defines the limits (|int| <=
2**53 - 1, nesting of MAX_JSON_DEPTH levels counted from the event) and the one
depth-checked walk; these tests hold every path to them, at 10,000 levels and at
the limit itself (limit - 1, limit, limit + 1).
"""

from __future__ import annotations

import math
import tempfile
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies as S
from aop_client import AOPClient, ClientConfig, ToonBuilder, TraceBuilder, parse_toon, to_toon
from aop_client.canonical import canonical_json, large_integers_as_doubles
from aop_client.client import _copy_json
from aop_client.collector.protocol import event_refusal, judge_events
from aop_client.errors import SignatureError, ToonParseError, ValidationError
from aop_client.events import make_event, validate_event
from aop_client.protocol import MAX_JSON_DEPTH, MAX_SAFE_INTEGER, check_json, show
from aop_client.signing import sign_event, signed_body, verify_event, verify_parsed_event
from aop_client.testing import TEST_ORG_SALT_KEY

VERY_DEEP = 10_000
RUN_ID = "0b7ac4d4-6f50-4f52-8f0f-5b0e6c6c0a11"


def nest(levels: int, leaf: object = 1, kind: str = "list") -> object:
    """``levels`` containers (lists or single-key dicts) around ``leaf``."""
    value = leaf
    for _ in range(levels):
        value = [value] if kind == "list" else {"a": value}
    return value


def custom_event(payload: dict) -> dict:
    """A custom event built without the builder (as a caller of emit_event may)."""
    return make_event(run_id=RUN_ID, agent_id=1, seq=1, type="custom", name="n", payload=payload, now=0.0)


def client_for(folder: str, hook=None) -> AOPClient:
    """A client with a private spool and no flusher (emit_event needs no server)."""
    return AOPClient(ClientConfig(api_key="k", base_url="http://127.0.0.1:9", agent_id=1,
                                  org_salt_key=TEST_ORG_SALT_KEY, spool_dir=folder, redaction_hook=hook))


@pytest.fixture(scope="module")
def clients():
    """(client without hook, client with a pass-through redaction hook), each on its own spool."""
    with tempfile.TemporaryDirectory() as plain, tempfile.TemporaryDirectory() as hooked:
        yield client_for(plain), client_for(hooked, hook=lambda event: event)


# ----------------------------------------------------------------- 10,000 levels

DEEP_CALLS = [
    ("create_reasoning", lambda v: dict(goal="g", note=v)),
    ("create_reasoning", lambda v: dict(goal="g", steps=[{"detail": v}])),
    ("create_action_request", lambda v: dict(action="a", params={"p": v})),
    ("create_action_response", lambda v: dict(status="ok", data=v)),
    ("create_final_output", lambda v: dict(text="t", structured=v)),
    ("create_error", lambda v: dict(message="m", details={"d": v})),
    ("create_custom", lambda v: dict(name="n", data={"d": v})),
]


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("method,kwargs", DEEP_CALLS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(DEEP_CALLS)])
def test_builders_refuse_10000_levels_with_validation_error(method, kwargs, kind):
    """Every create_* raises ValidationError naming the nesting, and takes no seq."""
    builder = TraceBuilder(1, RUN_ID)
    with pytest.raises(ValidationError, match="nesting deeper than 128 levels"):
        getattr(builder, method)(**kwargs(nest(VERY_DEEP, kind=kind)))
    assert builder.next_seq == 1


@pytest.mark.parametrize("hooked", [False, True], ids=["no-hook", "hook"])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_emit_event_refuses_10000_levels_with_validation_error_and_stores_nothing(clients, hooked, kind):
    """With and without a redaction hook: ValidationError (not RecursionError, not a silent drop)."""
    client = clients[hooked]
    before = client.get_stats()
    with pytest.raises(ValidationError, match="nesting deeper") as info:
        client.emit_event(custom_event({"deep": nest(VERY_DEEP, kind=kind)}))
    assert info.value.field.startswith("payload.deep")
    after = client.get_stats()
    assert (after["stored"], after["pending"], after["dropped"]) == (before["stored"], before["pending"],
                                                                      before["dropped"])


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_signing_and_copies_refuse_10000_levels(kind):
    """canonical_json, signed_body, the hook copy, validate_event and verify_* all answer, bounded."""
    deep = nest(VERY_DEEP, kind=kind)
    event = custom_event({"deep": deep})
    for call in (lambda: canonical_json(deep), lambda: signed_body(event, TEST_ORG_SALT_KEY),
                 lambda: _copy_json(event), lambda: validate_event(event), lambda: check_json(deep)):
        with pytest.raises(ValidationError, match="nesting deeper"):
            call()
    forged = dict(event, sig="v1=" + "0" * 64)
    with pytest.raises(SignatureError, match="nesting deeper"):
        verify_event(forged, TEST_ORG_SALT_KEY)
    with pytest.raises(SignatureError, match="nesting deeper"):
        verify_parsed_event(dict(forged), TEST_ORG_SALT_KEY)
    assert large_integers_as_doubles(deep) is not None  # returns (the too-deep part as it is)


def test_text_formats_refuse_10000_levels():
    """to_toon raises ValidationError; parse_toon (JSON and TOON input) raises ToonParseError."""
    with pytest.raises(ValidationError, match="nesting deeper"):
        to_toon(nest(VERY_DEEP))
    json_text = ('{"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "custom", "name": "n", "payload": {"a": '
                 + "[" * VERY_DEEP + "]" * VERY_DEEP + "}}")
    with pytest.raises(ToonParseError, match="nesting"):
        parse_toon(json_text)
    toon_text = "seq: 1\nt: 2025-12-05T10:00:00Z\ntype: custom\nname: n\npayload:\n" + "".join(
        "  " * (level + 1) + "a:\n" for level in range(1500)) + "  " * 1501 + "b: 1\n"
    with pytest.raises(ToonParseError, match="nested too deeply"):
        parse_toon(toon_text)


def test_collector_refuses_10000_levels_with_a_reason():
    """The reference collector's judge gives a reason for a deep event, signed or not (never an exception)."""
    event = custom_event({"deep": nest(VERY_DEEP)})
    assert "nesting deeper" in event_refusal(event, None)
    accepted, rejected = judge_events([dict(event, sig="v1=" + "0" * 64)], TEST_ORG_SALT_KEY)
    assert accepted == [] and "nesting deeper" in rejected[0]["reason"]
    accepted, rejected = judge_events([event], None)
    assert accepted == [] and "nesting deeper" in rejected[0]["reason"]


def test_error_messages_are_safe_for_huge_values():
    """A refused 5000-digit integer or deep container still gets a short message (no repr failure)."""
    with pytest.raises(ValidationError, match="an integer of 16610 bits") as info:
        check_json({"n": 10**5000})
    assert info.value.field == "n" and len(str(info.value)) < 200
    assert len(show(nest(VERY_DEEP))) <= 80


# ------------------------------------------------------------- at the limit


def accepts(call, reason: str = "") -> bool:
    """True when ``call()`` accepts (None, or a truthy EmitResult); False on a ValidationError giving ``reason``."""
    try:
        result = call()
    except ValidationError as error:
        assert reason in str(error), error
        return False
    return result is None or bool(result)


@pytest.mark.parametrize("event_depth", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_every_path_agrees_at_the_depth_limit(clients, event_depth, kind):
    """An event nested exactly MAX_JSON_DEPTH deep (the event is level 1) passes everywhere; one more fails everywhere."""
    inner = nest(event_depth - 2, kind=kind)  # event (1) > payload (2) > inner's containers (3 ..)
    payload = {"v": inner}
    event = custom_event(payload)
    ok = event_depth <= MAX_JSON_DEPTH
    outcomes = {name: accepts(call, "nesting deeper than 128 levels") for name, call in [
        ("create_custom", lambda: TraceBuilder(1, RUN_ID).create_custom("n", {"v": inner})),
        ("action_response", lambda: TraceBuilder(1, RUN_ID).create_action_response("ok", data=inner)),
        ("emit", lambda: clients[0].emit_event(event)),
        ("emit_hooked", lambda: clients[1].emit_event(event)),
        ("canonical", lambda: canonical_json(event)),
        ("validate_event", lambda: validate_event(event)),
    ]}
    assert outcomes == dict.fromkeys(outcomes, ok)
    signed = orjson_roundtrip(sign_event(event, TEST_ORG_SALT_KEY)) if ok else None
    if ok:
        assert event_refusal(signed, TEST_ORG_SALT_KEY) is None
        assert parse_toon(to_toon([signed]))[0]["payload"] == payload  # a trace document adds a level
    else:
        with pytest.raises(ToonParseError, match="nesting deeper than 128"):
            parse_toon(to_toon(event))
    assert (event_refusal(event, None) is None) == ok


def orjson_roundtrip(value):
    import orjson

    return orjson.loads(orjson.dumps(value))


@pytest.mark.parametrize("number,ok", [
    (MAX_SAFE_INTEGER, True), (-MAX_SAFE_INTEGER, True), (2**53, False), (-(2**53), False), (2**53 + 1, False),
])
def test_builder_emit_and_collector_share_the_integer_bound(clients, number, ok):
    """|n| <= 2**53 - 1 (RFC 8785 / I-JSON): the builders and emit_event accept or refuse alike."""
    event = custom_event({"n": number})
    outcomes = {name: accepts(call, "2**53-1") for name, call in [
        ("create_custom", lambda: TraceBuilder(1, RUN_ID).create_custom("n", {"n": number})),
        ("build_action_request", lambda: ToonBuilder.build_action_request_payload("a", {"n": number})),
        ("emit", lambda: clients[0].emit_event(event)),
        ("emit_hooked", lambda: clients[1].emit_event(event)),
        ("validate_event", lambda: validate_event(event)),
    ]}
    assert outcomes == dict.fromkeys(outcomes, ok)
    assert (event_refusal(event, None) is None) == ok


# ----------------------------------------------------------------- property

EDGE_INTS = st.sampled_from([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 2**53, -(2**53), 2**53 + 1, 2**64, -(10**400)])
ODD_SCALARS = st.sampled_from([math.nan, math.inf, -math.inf, "lone \ud800", b"bytes", {1, 2}])  # not ... : the builders read it as a placeholder
SCALARS = S.json_scalars | EDGE_INTS | st.floats() | ODD_SCALARS
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(S.keys, c, max_size=3),
                      max_leaves=10)
NEAR_LIMIT = st.builds(nest, st.integers(MAX_JSON_DEPTH - 6, MAX_JSON_DEPTH), VALUES, st.sampled_from(["list", "dict"]))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=VALUES | NEAR_LIMIT, hooked=st.booleans())
def test_builder_accepts_exactly_what_emit_event_accepts(clients, value, hooked):
    """Property: for any value, the builder accepts it iff emit_event accepts the same event built by hand."""
    builder = TraceBuilder(1, RUN_ID)
    built = accepts(lambda: builder.create_custom("n", {"v": value}))
    event = make_event(run_id=str(uuid.uuid4()), agent_id=1, seq=1, type="custom", name="n",
                       payload={"v": value}, now=0.0)
    emitted = accepts(lambda: clients[hooked].emit_event(event))
    assert built == emitted
    if built:  # and what the builder built is what emit_event stores
        assert clients[hooked].emit_event(builder.get_events()[0])
