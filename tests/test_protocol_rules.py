"""Each rule of the protocol is defined once, in aop_client/protocol, and every part judges events by it.

Read from the tree (ast): the limits, EVENT_TYPES and the envelope's regexes are
assigned only in the protocol package; no other module bounds ``seq`` or tests
membership of EVENT_TYPES itself. Then behaviour: the builder, emit, the TOON
import, the store and the collector draw the same lines (seq bound, ``t``
format, event types), and the collector's fast envelope check never accepts what
the reference check refuses (property).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import aop_client
from aop_client import events as events_module
from aop_client import protocol
from aop_client.collector import protocol as collector_protocol
from aop_client.errors import ValidationError
from aop_client.protocol import MAX_SEQ, check_envelope, envelope_refusal, well_formed_envelope

PACKAGE = Path(aop_client.__file__).parent
PROTOCOL = PACKAGE / "protocol"
#: Names that hold one of the protocol's rules; only the protocol package may assign them.
RULE_NAMES = {"EVENT_TYPES", "ENVELOPE_FIELDS", "MAX_SAFE_INTEGER", "MAX_JSON_DEPTH", "MAX_DOCUMENT_DEPTH", "MAX_SEQ"}
UUID_PATTERN = re.compile(r"\{8\}-.*\{12\}")  # the text of a UUID regex
T_PATTERN = re.compile(r"\{4\}\)?-.*T.*:")  # the text of an RFC 3339 timestamp regex
SIG_PATTERN = "v1=[0-9a-f]{64}"


def modules_outside_protocol() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if PROTOCOL not in path.parents:
            yield str(path.relative_to(PACKAGE)), ast.parse(path.read_text(encoding="utf-8"))


def assigned_names(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    yield name.id


def mentions_seq(node: ast.AST) -> bool:
    """``seq``, ``x.seq``, ``event["seq"]`` or ``event.get("seq")``."""
    if isinstance(node, ast.Name):
        return node.id == "seq"
    if isinstance(node, ast.Attribute):
        return node.attr == "seq"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "seq"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "seq"
    return False


def is_bound(node: ast.AST) -> bool:
    """A literal upper bound: an int above 1 or a power such as 2**63."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return True
    if isinstance(node, ast.BinOp):
        return is_bound(node.left) or is_bound(node.right)
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value > 1


def test_rule_names_are_assigned_only_in_the_protocol_package() -> None:
    """EVENT_TYPES, the seq bound and the JSON limits: one assignment each, in aop_client/protocol."""
    found = [(module, name) for module, tree in modules_outside_protocol() for name in assigned_names(tree)
             if name in RULE_NAMES or ("SEQ" in name.upper() and "MAX" in name.upper())]
    assert found == []


def test_no_module_outside_the_protocol_bounds_seq_or_lists_the_event_types() -> None:
    """No ``seq < 2**63``-style literal bound, no set of event types, no ``in EVENT_TYPES`` of its own."""
    found = []
    for module, tree in modules_outside_protocol():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(mentions_seq(o) for o in operands) and any(is_bound(o) for o in operands):
                    found.append((module, node.lineno, "literal seq bound"))
                if any(isinstance(o, ast.Name) and o.id == "EVENT_TYPES" for o in node.comparators):
                    found.append((module, node.lineno, "own event type check"))
            if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
                strings = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if {"action_request", "final_output"} <= strings:
                    found.append((module, node.lineno, "a list of the event types"))
    assert found == []


def test_the_envelope_regexes_are_written_only_in_the_protocol_package() -> None:
    """The UUID, ``t`` and ``sig`` patterns appear as text only in aop_client/protocol."""
    found = []
    for module, tree in modules_outside_protocol():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if UUID_PATTERN.search(text) or T_PATTERN.search(text) or SIG_PATTERN in text:
                    found.append((module, node.lineno, text[:40]))
    assert found == []


def imports_from_protocol(module: str) -> set[str]:
    """The names ``aop_client/<module>`` imports from the protocol package."""
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    return {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[-1] == "protocol" and node.level == module.count("/") + 1
            for alias in node.names}


def test_builder_signing_store_collector_and_replay_use_the_protocol_rules() -> None:
    """Each part imports its rules from aop_client.protocol; emit's check IS the protocol's."""
    assert {"check_envelope", "EVENT_TYPES", "MAX_SEQ", "is_uuid", "parse_timestamp"} <= imports_from_protocol("events.py")
    assert events_module.validate_envelope is check_envelope
    assert {"check_envelope", "is_uuid"} <= imports_from_protocol("trace_builder.py")
    assert {"envelope_refusal", "well_formed_envelope", "EVENT_TYPES", "MAX_SEQ"} <= \
        imports_from_protocol("collector/protocol.py")
    assert collector_protocol.EVENT_TYPES is protocol.EVENT_TYPES
    assert "MAX_SEQ" in imports_from_protocol("store/disk_store.py")
    assert "EVENT_SIG_RE" in imports_from_protocol("signing.py")
    assert "check_envelope" in imports_from_protocol("cli/files.py")


def envelope(**changes: Any) -> dict:
    event = {"event_id": "00000000-0000-4000-8000-000000000001", "run_id": "11111111-1111-4111-8111-111111111111",
             "agent_id": 7, "seq": 1, "t": "2025-12-05T10:00:00.000Z", "type": "custom", "name": "n",
             "payload": {}}
    event.update(changes)
    return event


@pytest.mark.parametrize("field, value", [
    ("seq", MAX_SEQ + 1), ("seq", 0), ("t", "2025-02-30T10:00:00.000Z"), ("t", "2025-13-05T10:00:00.000Z"),
    ("t", "\u0662025-12-05T10:00:00.000Z"), ("type", "thinking"), ("event_id", "not-a-uuid"), ("name", ""),
])
def test_emit_the_import_and_the_collector_refuse_the_same_envelopes(field: str, value: Any) -> None:
    """One line for all: what emit refuses the TOON import and the collector refuse too, naming the field."""
    bad = envelope(**{field: value})
    for imported in (False, True):
        if imported and field == "t" and value.startswith("2025-13"):
            continue
        with pytest.raises(ValidationError) as refused:
            check_envelope(bad, imported=imported)
        assert refused.value.field == field
    reason = collector_protocol.event_refusal(orjson.loads(orjson.dumps(bad)), None)
    assert reason is not None and reason.startswith(f"{field}:")


def test_the_largest_seq_is_accepted_everywhere() -> None:
    """MAX_SEQ itself passes emit's check and the collector's."""
    good = envelope(seq=MAX_SEQ)
    check_envelope(good)
    assert collector_protocol.event_refusal(good, None) is None


def test_the_store_takes_the_protocol_seq_bound(tmp_path: Path) -> None:
    """DiskStore.append refuses a seq above MAX_SEQ (it took any u64 before), naming seq."""
    from aop_client.store import DiskStore

    store = DiskStore(tmp_path / "spool")
    try:
        assert store.append("e1", "r", MAX_SEQ, b"{}").stored
        with pytest.raises(ValidationError) as refused:
            store.append("e2", "r", MAX_SEQ + 1, b"{}")
        assert refused.value.field == "seq"
    finally:
        store.close()


TIMESTAMPS = st.one_of(
    st.builds("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z".format, st.integers(0, 9999), st.integers(0, 13),
              st.integers(0, 32), st.integers(0, 24), st.integers(0, 60), st.integers(0, 60), st.integers(0, 999)),
    st.text(alphabet=st.sampled_from("0123456789-T:.Z \u0662"), min_size=20, max_size=26),
)
UUIDS = st.uuids().map(str)
SCALARS = st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=False) | st.text(max_size=5)
FIELDS = {
    "event_id": st.one_of(UUIDS, UUIDS.map(str.upper), UUIDS.map(lambda u: u[:-1] + "g"), SCALARS),
    "run_id": st.one_of(UUIDS, UUIDS.map(lambda u: u + "0"), SCALARS),
    "agent_id": st.one_of(st.integers(-(2**40), 2**40), SCALARS),
    "seq": st.one_of(st.integers(1, 2**40), st.sampled_from([0, -1, MAX_SEQ, MAX_SEQ + 1, 2**63]), SCALARS),
    "t": TIMESTAMPS,
    "type": st.one_of(st.sampled_from(sorted(protocol.EVENT_TYPES)), SCALARS),
    "name": st.one_of(st.just("n"), SCALARS),
    "payload": st.one_of(st.dictionaries(st.text(max_size=3), SCALARS, max_size=2), SCALARS),
}
ENVELOPES = st.fixed_dictionaries({}, optional=FIELDS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ENVELOPES)
@example(envelope(t="2025-02-29T10:00:00.000Z"))
@example(envelope(t="2024-02-29T10:00:00.000Z"))
@example(envelope(t="2025-12-05T24:00:00.000Z"))
def test_the_fast_envelope_check_agrees_with_the_reference(event: dict) -> None:
    """Property: the fast check never accepts what check_envelope refuses, so envelope_refusal is the reference's."""
    event = json.loads(json.dumps(event))  # as parsed from a request: exact builtin types
    try:
        check_envelope(event, check_sig=False)
        reference = None
    except ValidationError as error:
        reference = str(error)
    if well_formed_envelope(event):
        assert reference is None
    assert envelope_refusal(event) == reference


def test_the_protocol_package_imports_only_errors_of_aop_client() -> None:
    """Import direction errors <- protocol <- the rest: the protocol imports no other part of aop_client."""
    found = []
    for path in sorted(PROTOCOL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                inside = node.level == 1  # from .json_values import ...
                if not inside and node.module != "errors":
                    found.append((path.name, node.module))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found.extend((path.name, n) for n in names if n.split(".")[0] == "aop_client")
    assert found == []
