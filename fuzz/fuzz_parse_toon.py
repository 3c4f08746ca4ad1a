"""Fuzz harness: parse_toon on arbitrary and mutated text/bytes.

Invariant: parse_toon returns a valid event (dict) or a list of valid events,
or raises ToonParseError - never anything else (no TypeError, RecursionError,
KeyError...). Inputs: random text and bytes, random JSON values, and valid
TOON/JSON renderings of generated events with random byte/line mutations.

Run with more examples: AOP_FUZZ_EXAMPLES=100000 python -m pytest fuzz/fuzz_parse_toon.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import strategies as S  # noqa: E402

from aop_client.errors import ToonParseError  # noqa: E402
from aop_client.events import validate_imported_event  # noqa: E402
from aop_client.toon_parser import parse_toon, to_toon  # noqa: E402

FUZZ = settings(
    max_examples=int(os.environ.get("AOP_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

TOON_FRAGMENTS = st.sampled_from([
    "\n", "  ", "\t", ":", ": ", "- ", "[", "]", "[2]", "[1]:", "{a,b}", "{", "}", ",", "|", '"', "\\", "#",
    "seq: 1", "payload:", "events[1]:", "null", "true", "1e999", "-0", "99999999999999999999", "\r\n", "\x00",
])


@st.composite
def mutated_documents(draw: st.DrawFn) -> str | bytes:
    """A valid TOON or JSON rendering of events, with a few random insertions, deletions or swaps."""
    value = draw(S.events() | S.traces)
    text = draw(st.sampled_from([
        to_toon(value), to_toon(value, pretty=True), json.dumps(value), json.dumps(value, indent=1),
    ]))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(text)))
        action = draw(st.sampled_from(["insert", "delete", "duplicate_line", "truncate"]))
        if action == "insert":
            text = text[:position] + draw(TOON_FRAGMENTS | st.text(max_size=3)) + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 8)):]
        elif action == "duplicate_line":
            lines = text.split("\n")
            index = position % len(lines)
            lines.insert(index, lines[index])
            text = "\n".join(lines)
        else:
            text = text[:position]
    if draw(st.booleans()):
        return text.encode("utf-8", errors="surrogatepass")
    return text


def _check(data: object) -> None:
    try:
        result = parse_toon(data)  # type: ignore[arg-type]
    except ToonParseError:
        return
    events = result if isinstance(result, list) else [result]
    assert isinstance(result, (dict, list))
    for event in events:
        validate_imported_event(event)


@FUZZ
@given(st.text() | st.binary())
@example("[" * 100000)
@example("{" * 100000)
@example("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 2000)))
@example("[" + "[1]:" * 5000)
@example(b"\xed\xa0\x80")
@example("- " * 3000 + "x")
def test_parse_toon_arbitrary_input(data):
    """Arbitrary text or bytes: a valid result or ToonParseError, nothing else."""
    _check(data)


@FUZZ
@given(mutated_documents())
def test_parse_toon_mutated_documents(data):
    """Mutated valid TOON/JSON: a valid result or ToonParseError, nothing else."""
    _check(data)


@FUZZ
@given(S.json_values.map(json.dumps) | S.json_values.map(lambda v: to_toon(v)))
def test_parse_toon_arbitrary_json_values(data):
    """Any JSON value as JSON or TOON text: a valid result or ToonParseError, nothing else."""
    _check(data)


@FUZZ
@given(st.none() | st.integers() | st.floats() | st.lists(st.text()) | st.dictionaries(st.text(), st.text()))
def test_parse_toon_wrong_argument_types(data):
    """Non-text arguments raise ToonParseError, not TypeError."""
    _check(data)
