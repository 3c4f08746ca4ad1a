"""`aop export`, `aop verify` and `aop replay` end to end: real spools, real files, a real collector."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aop_client.cli import main
from aop_client.cli.files import load_events
from aop_client.core.fallback_doc import fallback_document
from aop_client.trace_files import write_trace_file
from aop_client.signing import sign_event
from aop_client.testing import TEST_ORG_SALT_KEY
from test_cli import (  # noqa: F401  (env is a fixture)
    EXIT_BAD_INPUT, EXIT_DAMAGED, EXIT_SERVER, EXIT_UNDELIVERED, PROPS, assert_error_line, closed_port_url, env,
    run_aop,
)
from test_cli_spool import fill_spool


@pytest.fixture
def exported(tmp_path: Path, env: dict[str, str]) -> dict:
    """A spool with one run of 6 events, exported to JSON (file) and TOON (file)."""
    spool = tmp_path / "spool"
    made = fill_spool(spool, 6)
    as_json = tmp_path / "run.json"
    as_toon = tmp_path / "run.toon"
    for fmt, path in (("json", as_json), ("toon", as_toon)):  # in-process: the subprocess path is tested below
        assert main(["export", "--run", made["run_id"], "--spool", str(spool), "--format", fmt, "-o", str(path)]) == 0
    return {**made, "spool": spool, "json": as_json, "toon": as_toon}


def test_export_writes_the_whole_run_in_seq_order(exported: dict, env: dict[str, str]) -> None:
    """The JSON export is a trace document with every event of the run, seq 1..n, as stored (signed)."""
    doc = json.loads(exported["json"].read_text())
    assert doc["run_id"] == exported["run_id"] and doc["event_count"] == 6
    assert [e["seq"] for e in doc["events"]] == [1, 2, 3, 4, 5, 6]
    assert [e["event_id"] for e in doc["events"]] == exported["ids"]
    assert all(e["sig"].startswith("v1=") for e in doc["events"])


def test_export_files_are_private_and_formats_agree(exported: dict) -> None:
    """Both exports are 0600 files holding the same events (TOON reads back to the JSON events)."""
    for path in (exported["json"], exported["toon"]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_events(str(exported["toon"])) == load_events(str(exported["json"]))


def test_export_to_stdout_and_file_agree(exported: dict, tmp_path: Path, env: dict[str, str]) -> None:
    """Without -o the document goes to stdout; with -o (subprocess) the file holds the same events."""
    result = run_aop("export", "--run", exported["run_id"], "--spool", str(exported["spool"]), env=env)
    assert result.returncode == 0
    assert json.loads(result.stdout)["events"] == json.loads(exported["json"].read_text())["events"]
    out = tmp_path / "again.toon"
    written = run_aop("export", "--run", exported["run_id"], "--spool", str(exported["spool"]), "--format", "toon",
                      "-o", str(out), env=env)
    assert written.returncode == 0 and "exported 6 events" in written.stderr
    assert load_events(str(out)) == json.loads(result.stdout)["events"]


def test_export_never_overwrites(exported: dict, env: dict[str, str]) -> None:
    """-o onto an existing file: exit 2 and the file is unchanged."""
    before = exported["json"].read_bytes()
    result = run_aop("export", "--run", exported["run_id"], "--spool", str(exported["spool"]),
                     "-o", str(exported["json"]), env=env)
    assert_error_line(result, EXIT_BAD_INPUT, "already exists")
    assert exported["json"].read_bytes() == before


def test_export_of_an_unknown_run_or_spool_is_bad_input(exported: dict, tmp_path: Path, env: dict[str, str]) -> None:
    """An unknown run id or a missing spool: exit 2 with one line naming it."""
    unknown = "11111111-1111-4111-8111-111111111111"
    assert_error_line(run_aop("export", "--run", unknown, "--spool", str(exported["spool"]), env=env),
                      EXIT_BAD_INPUT, unknown)
    assert_error_line(run_aop("export", "--run", unknown, "--spool", str(tmp_path / "x"), env=env),
                      EXIT_BAD_INPUT, "does not exist")


def test_verify_accepts_both_exports(exported: dict, env: dict[str, str]) -> None:
    """verify with the right key (option or AOP_ORG_SALT_KEY) passes for JSON and TOON exports."""
    result = run_aop("verify", str(exported["json"]), str(exported["toon"]), "--key", TEST_ORG_SALT_KEY, env=env)
    assert result.returncode == 0 and result.stdout.count("6 events, every signature valid") == 2
    from_env = run_aop("verify", str(exported["json"]), env={**env, "AOP_ORG_SALT_KEY": TEST_ORG_SALT_KEY})
    assert from_env.returncode == 0


def test_verify_with_a_wrong_key_fails_with_exit_1(exported: dict, env: dict[str, str]) -> None:
    """A wrong key: exit 1, the line counts the failures and names the first event."""
    result = run_aop("verify", str(exported["json"]), "--key", "another-key", env=env)
    assert_error_line(result, EXIT_UNDELIVERED, "6 of 6 events fail", exported["ids"][0], "mismatch")


def test_verify_catches_one_tampered_event(exported: dict, tmp_path: Path, env: dict[str, str]) -> None:
    """Changing one event's payload after signing makes exactly that event fail."""
    doc = json.loads(exported["json"].read_text())
    doc["events"][3]["payload"]["params"] = {"i": 999}
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    result = run_aop("verify", str(tampered), "--key", TEST_ORG_SALT_KEY, env=env)
    assert_error_line(result, EXIT_UNDELIVERED, "1 of 6 events fail", "event 4", exported["ids"][3])


def test_verify_bad_inputs(exported: dict, tmp_path: Path, env: dict[str, str]) -> None:
    """No key: 2; missing file: 2; a directory: 2; truncated JSON, binary bytes, JSON that is no trace: 4."""
    assert_error_line(run_aop("verify", str(exported["json"]), env=env), EXIT_BAD_INPUT, "no key")
    assert_error_line(run_aop("verify", str(tmp_path / "none.json"), "--key", "k", env=env), EXIT_BAD_INPUT,
                      "no such file")
    assert_error_line(run_aop("verify", str(tmp_path), "--key", "k", env=env), EXIT_BAD_INPUT, "directory")
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(exported["json"].read_bytes()[:-40])
    assert_error_line(run_aop("verify", str(truncated), "--key", "k", env=env), EXIT_DAMAGED, "damaged")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert_error_line(run_aop("verify", str(binary), "--key", "k", env=env), EXIT_DAMAGED, "not UTF-8")
    not_trace = tmp_path / "number.json"
    not_trace.write_text("[1, 2, 3]")
    assert_error_line(run_aop("verify", str(not_trace), "--key", "k", env=env), EXIT_DAMAGED, "not a trace file")


def replay_args(collector: Any, *files: Path) -> list[str]:
    """`aop replay FILES --to collector` with its keys."""
    return ["replay", *map(str, files), "--to", collector.url, "--api-key", collector.api_key,
            "--key", collector.org_salt_key, "--json"]


def test_replay_is_idempotent(exported: dict, env: dict[str, str], aop_collector: Any) -> None:
    """Replaying a file delivers its events; replaying it again only produces duplicates."""
    first = run_aop(*replay_args(aop_collector, exported["json"]), env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"files": 1, "events": 6, "accepted": 6, "duplicates": 0, "rejected": []}
    again = run_aop(*replay_args(aop_collector, exported["json"], exported["toon"]), env=env)
    assert json.loads(again.stdout)["duplicates"] == 12
    assert aop_collector.event_ids() == set(exported["ids"])


def test_replay_sends_fallback_files(tmp_path: Path, env: dict[str, str], aop_collector: Any) -> None:
    """A fallback file written in the library's format replays in batches (batch size from AOP_BATCH_SIZE)."""
    events = [sign_event({"event_id": f"00000000-0000-4000-8000-{i:012d}", "run_id": "22222222-2222-4222-8222-222222222222",
                          "agent_id": 1, "seq": i + 1, "t": "2025-12-05T10:00:00.000Z", "type": "custom",
                          "name": "n", "payload": {"data": i}}, TEST_ORG_SALT_KEY) for i in range(7)]
    run_id = events[0]["run_id"]
    doc = fallback_document(run_id, [(e["seq"], orjson.dumps(e)) for e in events], {"agent_id": 1},
                            now=time.time())
    path = write_trace_file(tmp_path / "fallback", "fallback", run_id, doc, now=time.time())
    result = run_aop(*replay_args(aop_collector, path), env={**env, "AOP_BATCH_SIZE": "3"})
    assert result.returncode == 0 and json.loads(result.stdout)["accepted"] == 7
    assert aop_collector.event_ids() == {e["event_id"] for e in events}
    batches = [r for r in aop_collector.request_log() if r["path"].endswith("/batch") and r["status"] == 200]
    assert [r["events"] for r in batches] == [3, 3, 1]
    assert len({r["batch_id"] for r in batches}) == 3


def test_replay_reports_rejected_events_with_exit_1(exported: dict, tmp_path: Path, env: dict[str, str],
                                                     aop_collector: Any) -> None:
    """Events whose signature the server refuses are reported as rejected: exit 1, the others delivered."""
    doc = json.loads(exported["json"].read_text())
    doc["events"][0]["payload"]["params"] = {"i": -1}
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    result = run_aop(*replay_args(aop_collector, tampered), env=env)
    assert_error_line(result, EXIT_UNDELIVERED, "1 events rejected", exported["ids"][0])
    assert aop_collector.event_ids() == set(exported["ids"][1:])


def test_replay_to_a_refusing_or_absent_server_exits_3(exported: dict, env: dict[str, str], aop_collector: Any) -> None:
    """A wrong API key (401) or no server at all: exit 3, one line, nothing stored on the server."""
    wrong = run_aop("replay", str(exported["json"]), "--to", aop_collector.url, "--api-key", "wrong", env=env)
    assert_error_line(wrong, EXIT_SERVER, "401")
    absent = run_aop("replay", str(exported["json"]), "--to", closed_port_url(), "--api-key", "k", env=env)
    assert_error_line(absent, EXIT_SERVER, "cannot reach")
    assert aop_collector.event_ids() == set()


def test_replay_checks_every_file_before_sending(exported: dict, tmp_path: Path, env: dict[str, str],
                                                 aop_collector: Any) -> None:
    """A damaged file (4) or a missing one (2) after a good one: nothing at all is sent."""
    damaged = tmp_path / "damaged.json"
    damaged.write_bytes(b'{"events": [{"event_id": ')
    result = run_aop(*replay_args(aop_collector, exported["json"], damaged), env=env)
    assert_error_line(result, EXIT_DAMAGED, str(damaged))
    missing = run_aop(*replay_args(aop_collector, exported["json"], tmp_path / "missing.json"), env=env)
    assert_error_line(missing, EXIT_BAD_INPUT, "no such file")
    assert aop_collector.event_ids() == set()


@PROPS
@given(st.lists(st.fixed_dictionaries({"seq": st.integers(1, 10**6), "type": st.sampled_from(["custom", "error"]),
                                       "payload": st.dictionaries(st.text(max_size=6), st.integers(-(2**53), 2**53) | st.text(max_size=8),
                                                                  max_size=3)}), max_size=6),
       st.sampled_from(["document", "list"]))
def test_load_events_reads_documents_and_lists_alike(events: list[dict], shape: str) -> None:
    """A trace document and a bare list of the same events load to the same list."""
    import tempfile

    value = {"run_id": "r", "events": events} if shape == "document" else events
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.json"
        path.write_bytes(orjson.dumps(value))
        assert load_events(str(path)) == events


def test_replay_splits_batches_the_server_finds_too_large(tmp_path: Path, env: dict[str, str],
                                                          aop_collector_factory: Any) -> None:
    """A server with a small body limit answers 413: replay splits the batch until every event fits, and an
    event that alone is too large is reported rejected (exit 1) while the others arrive."""
    collector = aop_collector_factory(max_body_bytes=1500, max_decompressed_bytes=1500)
    run_id = "44444444-4444-4444-8444-444444444444"
    events = [sign_event({"event_id": f"00000000-0000-4000-8000-{i:012d}", "run_id": run_id, "agent_id": 1,
                          "seq": i + 1, "t": "2025-12-05T10:00:00.000Z", "type": "custom",
                          "name": "n", "payload": {"data": "x" * (2000 if i == 4 else 150)}}, TEST_ORG_SALT_KEY)
              for i in range(8)]
    path = tmp_path / "big.json"
    path.write_bytes(orjson.dumps({"run_id": run_id, "events": events}))
    result = run_aop(*replay_args(collector, path), env={**env, "AOP_GZIP_THRESHOLD": "1000000"})
    assert_error_line(result, EXIT_UNDELIVERED, "1 events rejected", events[4]["event_id"], "413")
    assert json.loads(result.stdout)["accepted"] == 7
    assert collector.event_ids() == {e["event_id"] for i, e in enumerate(events) if i != 4}
