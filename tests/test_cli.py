"""The `aop` command line: help, usage errors, exit codes and one-line errors; shared helpers for test_cli_*.

Every end-to-end test runs ``python -m aop_client.cli`` in a real subprocess
with a clean environment (no AOP_* variables leak in, a private XDG state dir).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client import errors
from aop_client.cli import main
from aop_client.cli._common import EXIT_BAD_INPUT, EXIT_DAMAGED, EXIT_SERVER, EXIT_UNDELIVERED, CliError, exit_code_for
from aop_client.cli.files import _batches, load_events

REPO = Path(__file__).resolve().parents[1]
SOAK = os.environ.get("AOP_SOAK") == "1"
PROPS = settings(max_examples=300 if SOAK else 40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DOCUMENTED_CODES = {0, 1, 2, 3, 4, 130}


def aop_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for the CLI: no AOP_* from the caller, a private state dir, no colours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOP_")}
    env.update(PYTHONPATH=str(REPO), XDG_STATE_HOME=str(home / "state"), NO_COLOR="1", COLUMNS="200",
               TERM="dumb")
    env.update(extra)
    return env


def run_aop(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``aop ARGS`` in a subprocess (stdin closed) and return the finished process."""
    return subprocess.run([sys.executable, "-m", "aop_client.cli", *args], capture_output=True, text=True,
                          env=env, cwd=str(REPO), timeout=timeout, stdin=subprocess.DEVNULL)


def assert_error_line(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The run failed with ``code`` and exactly one ``aop: error:`` line (no traceback) naming ``fragments``."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("aop: error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (a port just released by the kernel)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean CLI environment rooted in tmp_path."""
    return aop_env(tmp_path)


def test_help_lists_commands_and_documents_exit_codes(env: dict[str, str]) -> None:
    """`aop --help` names every command and documents exit codes 0-4."""
    result = run_aop("--help", env=env)
    assert result.returncode == 0
    for command in ("demo", "serve", "status", "flush", "replay", "export", "verify", "dead-letters"):
        assert command in result.stdout
    assert "Exit codes: 0 ok; 1 " in " ".join(result.stdout.split())
    for code in ("2 usage error", "3 the server refused", "4 a damaged file"):
        assert code in " ".join(result.stdout.split())


def test_version(env: dict[str, str]) -> None:
    """`aop --version` prints the package version."""
    from aop_client import __version__

    result = run_aop("--version", env=env)
    assert result.returncode == 0 and result.stdout.strip() == f"aop {__version__}"


def test_unknown_command_is_one_line_exit_2(env: dict[str, str]) -> None:
    """An unknown command is a usage error: one line, exit 2."""
    assert_error_line(run_aop("frobnicate", env=env), EXIT_BAD_INPUT, "frobnicate")


def test_unknown_option_is_one_line_exit_2(env: dict[str, str]) -> None:
    """An unknown option is a usage error: one line, exit 2."""
    assert_error_line(run_aop("status", "--no-such-option", env=env), EXIT_BAD_INPUT, "--no-such-option")


def test_bad_environment_variable_names_it(tmp_path: Path) -> None:
    """A malformed AOP_* variable is bad input (exit 2) and the line names the variable and value."""
    result = run_aop("status", "--spool", str(tmp_path), env=aop_env(tmp_path, AOP_BATCH_SIZE="lots"))
    assert_error_line(result, EXIT_BAD_INPUT, "AOP_BATCH_SIZE", "lots")


def test_debug_shows_the_traceback(tmp_path: Path, env: dict[str, str]) -> None:
    """With --debug the error propagates with its traceback instead of the one-line form."""
    result = run_aop("--debug", "status", "--spool", str(tmp_path / "missing"), env=env)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "does not exist" in result.stderr


def _error_classes() -> list[type]:
    return [getattr(errors, name) for name in errors.__all__]


@PROPS
@given(st.sampled_from(_error_classes()))
def test_every_library_error_maps_to_a_documented_code(cls: type) -> None:
    """exit_code_for sends every AOPError subclass to a documented code (transport 3, parse 4, signature 1)."""
    err = cls.__new__(cls)
    code = exit_code_for(err)
    assert code in DOCUMENTED_CODES - {0, 130}
    if issubclass(cls, errors.TransportError):
        assert code == EXIT_SERVER
    elif issubclass(cls, errors.ToonParseError):
        assert code == EXIT_DAMAGED
    elif issubclass(cls, errors.SignatureError):
        assert code == EXIT_UNDELIVERED
    else:
        assert code == EXIT_BAD_INPUT


@PROPS
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        min_size=1, max_size=12), min_size=1, max_size=3))
def test_missing_files_always_give_one_line_and_exit_2(names: list[str]) -> None:
    """verify on paths that do not exist: exit 2 and a single `aop: error:` line, whatever the names."""
    import contextlib
    import io

    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, "missing-" + name.replace("/", "_").replace("\n", "_")) for name in names]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["verify", "--key", "k", *paths])
    assert code == EXIT_BAD_INPUT
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aop: error: ") and "no such file" in lines[0]


@PROPS
@given(st.binary(max_size=300))
def test_load_events_returns_events_or_a_documented_error(data: bytes) -> None:
    """Arbitrary file content loads as a list of event objects or fails with CliError exit 4 (damaged)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        Path(path).write_bytes(data)
        try:
            loaded = load_events(path)
        except CliError as e:
            assert e.exit_code == EXIT_DAMAGED
            assert path in e.format_message()
        else:
            assert isinstance(loaded, list) and all(isinstance(ev, dict) for ev in loaded)


@PROPS
@given(st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=30), max_size=4)
                .map(lambda d: {**d, "event_id": str(len(d))}), max_size=30),
       st.integers(1, 8), st.integers(1, 400))
def test_replay_batches_keep_order_and_bounds(events: list[dict], max_events: int, max_bytes: int) -> None:
    """_batches partitions the events in order; each batch respects the count bound and, unless it is a
    single event, the byte bound."""
    import orjson

    batches = list(_batches(events, max_events, max_bytes))
    flat = [orjson.loads(b) for batch in batches for _, b in batch]
    assert flat == events
    assert [i for batch in batches for i, _ in batch] == [e["event_id"] for e in events]
    for batch in batches:
        assert 1 <= len(batch) <= max_events
        if len(batch) > 1:
            assert sum(len(b) + 1 for _, b in batch) - 1 <= max_bytes
