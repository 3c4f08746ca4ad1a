"""`aop serve` end to end: the reference collector as a child process, its options, faults and bad input."""

from __future__ import annotations

import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from aop_client.collector.runner import READY_PREFIX
from test_cli import (  # noqa: F401  (env is a fixture)
    EXIT_BAD_INPUT, EXIT_SERVER, REPO, assert_error_line, env, run_aop,
)
from test_cli_spool import fill_spool


class Served:
    """A running `aop serve` child: its URL and process."""

    def __init__(self, popen: subprocess.Popen, url: str) -> None:
        self.popen = popen
        self.url = url

    def stop(self) -> tuple[int, str]:
        """SIGTERM the child (ours); return its exit code and its stderr."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            _out, err = self.popen.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _out, err = self.popen.communicate()
        return self.popen.returncode, err


def start_serve(env: dict[str, str], *args: str, timeout: float = 30.0) -> Served:
    """Start `aop serve --port 0 ARGS` and wait (bounded) for its ready line."""
    popen = subprocess.Popen([sys.executable, "-m", "aop_client.cli", "serve", "--port", "0", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO),
                             stdin=subprocess.DEVNULL, text=True)
    selector = selectors.DefaultSelector()
    selector.register(popen.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                line = popen.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return Served(popen, line[len(READY_PREFIX):].strip())
                if not line:
                    break
        popen.kill()
        raise AssertionError(f"aop serve never became ready: {popen.stderr.read()}")
    finally:
        selector.close()


def test_serve_receives_a_flush_and_stops_cleanly_on_sigterm(tmp_path: Path, env: dict[str, str]) -> None:
    """Keys from AOP_COLLECTOR_*: events flushed to `aop serve` land in its --db file; SIGTERM ends it with 0."""
    from aop_client.collector.storage import CollectorStorage

    db = tmp_path / "served.sqlite3"
    server = start_serve({**env, "AOP_COLLECTOR_API_KEY": "serve-key", "AOP_COLLECTOR_ORG_SALT_KEY": "serve-salt"},
                         "--db", str(db))
    try:
        spool = tmp_path / "spool"
        made = fill_spool(spool, 5, key="serve-salt", base_url=server.url, api_key="serve-key")
        result = run_aop("flush", "--spool", str(spool), "--base-url", server.url, "--api-key", "serve-key",
                         "--key", "serve-salt", "--timeout", "30", env=env)
        assert result.returncode == 0 and "5 delivered" in result.stdout, result.stderr
    finally:
        code, stderr = server.stop()
    assert code == 0 and "Traceback" not in stderr
    assert "serve-key" not in stderr and "serve-salt" not in stderr
    storage = CollectorStorage(str(db))
    try:
        assert storage.event_ids() == set(made["ids"])
    finally:
        storage.close()


def test_serve_fault_options_reach_the_client(tmp_path: Path, env: dict[str, str]) -> None:
    """--fault-rate-503 1 makes every batch fail: the client's flush reports the 503 and exits 3."""
    server = start_serve(env, "--api-key", "k", "--key", "s", "--db", str(tmp_path / "f.sqlite3"),
                         "--fault-rate-503", "1", "--fault-seed", "7", "--retry-after", "0")
    try:
        spool = tmp_path / "spool"
        fill_spool(spool, 2, key="s", base_url=server.url, api_key="k")
        result = run_aop("flush", "--spool", str(spool), "--base-url", server.url, "--api-key", "k", "--key", "s",
                         "--timeout", "1", "--quiet", env=env)
        assert_error_line(result, EXIT_SERVER, "2 events remain undelivered", "503")
    finally:
        assert server.stop()[0] == 0


def test_serve_without_an_api_key_is_bad_input(env: dict[str, str]) -> None:
    """No --api-key and no AOP_COLLECTOR_API_KEY: exit 2 with one line saying how to give one."""
    assert_error_line(run_aop("serve", "--port", "0", env=env), EXIT_BAD_INPUT, "AOP_COLLECTOR_API_KEY")


def test_serve_refuses_bad_fault_rates(env: dict[str, str]) -> None:
    """A rate outside [0, 1] (click) or rates summing over 1 (FaultConfig) are exit 2."""
    assert_error_line(run_aop("serve", "--api-key", "k", "--fault-rate-500", "1.5", env=env), EXIT_BAD_INPUT, "1.5")
    assert_error_line(run_aop("serve", "--api-key", "k", "--port", "0", "--fault-rate-500", "0.7",
                              "--fault-rate-503", "0.7", env=env), EXIT_BAD_INPUT, "more than 1")


def test_serve_on_a_busy_port_exits_3(env: dict[str, str], tmp_path: Path) -> None:
    """Another socket already listens on the port: exit 3 with one line naming it."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_aop("serve", "--api-key", "k", "--port", str(port), "--db", str(tmp_path / "b.sqlite3"), env=env)
    assert_error_line(result, EXIT_SERVER, f"127.0.0.1:{port}")


def test_serve_connection_bounds_reach_the_server(tmp_path: Path, env: dict[str, str]) -> None:
    """--header-timeout closes a socket that sent half a head within that time; a bad bound is exit 2."""
    from urllib.parse import urlsplit

    server = start_serve(env, "--api-key", "k", "--db", str(tmp_path / "h.sqlite3"), "--header-timeout", "0.3")
    try:
        parts = urlsplit(server.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as stalled:
            stalled.sendall(b"GET /api/v1/health HTTP/1.1\r\nHo")
            began = time.monotonic()
            stalled.settimeout(5.0)  # the server closes it first: EOF or a reset, well before this
            try:
                assert stalled.recv(1) == b""
            except ConnectionResetError:
                pass
            assert time.monotonic() - began < 3.0
    finally:
        assert server.stop()[0] == 0
    assert_error_line(run_aop("serve", "--api-key", "k", "--port", "0", "--max-connections", "0", env=env),
                      EXIT_BAD_INPUT, "max_connections")
