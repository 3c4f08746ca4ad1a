"""Reusable hypothesis strategies for valid trace events and JSON payload values.

Import from any test file (tests/ or fuzz/) with::

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    import strategies

(``tests`` is not a package; pytest's default ``prepend`` import mode already
puts ``tests/`` on ``sys.path`` for the files inside it.)

``PROPERTY_SETTINGS`` keeps the default run short; ``AOP_SOAK=1`` raises the
example counts for a long run.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SOAK = os.environ.get("AOP_SOAK") == "1"
PROPERTY_SETTINGS = settings(
    max_examples=2000 if SOAK else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

EVENT_TYPES = ("reasoning", "action_request", "action_response", "final_output", "error", "custom")

#: Strings that TOON and CSV-like formats must quote or escape to keep them strings.
TRICKY_STRINGS = (
    "", " ", "true", "false", "null", "12", "-12", "1.5", "1e5", "05", "-0", "0.0", "-", "--", "- item",
    "a,b", "a|b", "a\tb", "a:b", ":", "key: value", " leading", "trailing ", "line\nbreak", "cr\rlf",
    '"quoted"', "back\\slash", "[1]", "[2]: a,b", "{x}", "#comment", "é", "日本語", "😀", "\u2028",
    "\x00", "\x1f", "a.b", "items[1]{a,b}:",
)

_characters = st.characters(blacklist_categories=("Cs",))  # no lone surrogates: not valid Unicode
strings = st.sampled_from(TRICKY_STRINGS) | st.text(_characters, max_size=20)
keys = st.sampled_from(TRICKY_STRINGS) | st.text(_characters, max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)  # the protocol's safe integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | strings
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=16,
)
json_objects = st.dictionaries(keys, json_values, max_size=5)

uuids = st.uuids(version=4).map(str) | st.uuids().map(lambda u: str(u).upper())
millis = st.integers(min_value=0, max_value=253402300799999)  # 1970 .. 9999-12-31T23:59:59.999Z


def _format_ms(ms: int) -> str:
    instant = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


timestamps = millis.map(_format_ms)
signatures = st.binary(min_size=32, max_size=32).map(lambda b: "v1=" + b.hex())

_steps = st.lists(
    st.fixed_dictionaries(
        {"step_id": strings, "description": strings},
        optional={"confidence": st.floats(min_value=0.0, max_value=1.0), "decision": strings},
    ),
    max_size=3,
)
reasoning_payloads = st.fixed_dictionaries(
    {
        "goal": strings,
        "steps": _steps,
        "safety_checks": st.lists(st.fixed_dictionaries({"name": strings, "result": strings}), max_size=2),
        "uncertainty": st.sampled_from(["low", "medium", "high"]),
    }
)
#: Free-form payloads never carry the reasoning-only keys whose values are constrained.
free_payloads = st.dictionaries(keys.filter(lambda k: k not in ("uncertainty", "steps")), json_values, max_size=5)


@st.composite
def events(draw: st.DrawFn, *, signed: bool | None = None) -> dict:
    """A valid, complete protocol-v1 event (envelope in protocol order, optional sig and extra field)."""
    kind = draw(st.sampled_from(EVENT_TYPES))
    payload = draw(reasoning_payloads if kind == "reasoning" and draw(st.booleans()) else free_payloads)
    event = {
        "event_id": draw(uuids),
        "run_id": draw(uuids),
        "agent_id": draw(st.integers(min_value=-(2**31), max_value=2**31)),
        "seq": draw(st.integers(min_value=1, max_value=2**40)),
        "t": draw(timestamps),
        "type": kind,
    }
    if kind == "custom":  # protocol v1 section 1: a custom event's name is the top-level "name"
        event["name"] = draw(strings.filter(bool))
    event["payload"] = payload
    if draw(st.booleans()):
        event["x_extra"] = draw(json_values)
    if signed if signed is not None else draw(st.booleans()):
        event["sig"] = draw(signatures)
    return event


traces = st.lists(events(), max_size=4)
