"""Ways to run the reference collector: blocking (CLI), in a background thread, or as a child process.

* :func:`run` serves until SIGINT/SIGTERM (``python -m aop_client.collector``, later ``aop serve``).
* :func:`start_collector` runs the aiohttp loop in a daemon thread of this
  process and returns a :class:`RunningCollector` (the pytest fixture uses it).
* :func:`start_collector_process` runs the CLI in a child process, for tests
  that must kill or restart the server independently; it returns a
  :class:`CollectorProcess`.

Both handles answer the same queries, read from the collector's SQLite file:
``event_ids()``, ``events(run_id)``, ``delivery_count(event_id)``,
``duplicate_deliveries()``, ``request_log()``, ``completions()``, ``stats()``; and
``connections()``, the connection guard's counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Optional

from aiohttp import web

from ..errors import TransportError
from .app import make_app
from .config import CollectorConfig
from .connections import GUARD_KEY, GuardedSite, raise_nofile_limit
from .faults import FaultConfig, FaultInjector
from .storage import CollectorStorage

__all__ = ["run", "start_collector", "start_collector_process", "RunningCollector", "CollectorProcess",
           "READY_PREFIX", "faults_to_json", "faults_from_json"]

#: The line the CLI prints (then flushes) once it listens: READY_PREFIX + base URL.
READY_PREFIX = "AOP collector listening on "
_SHUTDOWN_TIMEOUT = 1.0  # seconds granted to in-flight (e.g. hanging fault) requests at stop


def faults_to_json(faults: FaultConfig) -> str:
    """Serialise a FaultConfig (for the CLI's environment and the fault-control route)."""
    fields = dataclasses.asdict(faults)
    fields["endpoints"] = sorted(faults.endpoints)
    fields["poison_event_ids"] = sorted(faults.poison_event_ids)
    return json.dumps(fields)


def faults_from_json(text: str) -> FaultConfig:
    """Inverse of faults_to_json."""
    fields = json.loads(text)
    fields["endpoints"] = frozenset(fields.get("endpoints", ("batch", "complete")))
    return FaultConfig(**fields)


async def _serve(config: CollectorConfig, storage: CollectorStorage,
                 injector: FaultInjector) -> tuple[web.AppRunner, str]:
    app = make_app(config, storage, injector)
    # auto_decompress=False: decode_body gunzips with our own size bound (no gzip bombs).
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT,
                           auto_decompress=False, keepalive_timeout=config.keepalive_timeout)  # the guard's too
    await runner.setup()
    site = GuardedSite(runner, app[GUARD_KEY], config.host, config.port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise TransportError(f"collector cannot listen on {config.host}:{config.port}: {e.strerror}",
                             retryable=False) from e
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{port}"


def run(config: CollectorConfig, *, announce: Any = None) -> None:
    """Serve ``config`` until SIGINT or SIGTERM; prints READY_PREFIX + URL (to ``announce`` or stdout)."""
    raise_nofile_limit()  # this process is the server: every descriptor its hard limit allows
    storage = CollectorStorage(config.db_path)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner, url = await _serve(config, storage, FaultInjector(config.faults))
        out = announce or sys.stdout
        print(READY_PREFIX + url, file=out, flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        storage.close()


class _Queries:
    """Query methods shared by both handles (``self.storage`` is a CollectorStorage)."""

    storage: CollectorStorage

    def event_ids(self) -> set[str]:
        """Every event_id the collector holds."""
        return self.storage.event_ids()

    def events(self, run_id: Optional[str] = None) -> list[dict]:
        """Stored envelopes by run then seq (only ``run_id``'s when given)."""
        return self.storage.events(run_id)

    def delivery_count(self, event_id: str) -> int:
        """How many times ``event_id`` arrived (duplicates included)."""
        return self.storage.delivery_count(event_id)

    def duplicate_deliveries(self) -> int:
        """How many arrivals were duplicates."""
        return self.storage.duplicate_deliveries()

    def request_log(self) -> list[dict]:
        """Every request the collector answered (or faulted), oldest first."""
        return self.storage.request_log()

    def completions(self, run_id: Optional[str] = None) -> list[dict]:
        """Every run-completion check, oldest first."""
        return self.storage.completions(run_id)

    def stats(self) -> dict:
        """The counters of GET /api/v1/stats (without ``connections``: see connections())."""
        return self.storage.stats()


class RunningCollector(_Queries):
    """A collector served by a background thread of this process; stop() it when done."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.api_key = config.api_key
        self.org_salt_key = config.org_salt_key
        self.storage = CollectorStorage(config.db_path)
        self.injector = FaultInjector(config.faults)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: Optional[web.AppRunner] = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="aop-collector", daemon=True)
        self._stopped = False

    def __repr__(self) -> str:
        return f"RunningCollector(url={self.url!r}, db_path={self.config.db_path!r})"

    def _start(self) -> "RunningCollector":
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(_serve(self.config, self.storage, self.injector), self._loop)
        try:
            self._runner, self.url = future.result(timeout=30)
        except BaseException:
            self._stop_loop()
            self.storage.close()
            raise
        return self

    @property
    def faults(self) -> FaultConfig:
        """The FaultConfig in force."""
        return self.injector.config

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the fault configuration (its seeded sequence restarts)."""
        self.injector.set(faults)

    def connections(self) -> dict:
        """The connection guard's counters (``connections`` of GET /api/v1/stats), read on the server's loop."""
        runner = self._runner
        if runner is None:
            raise RuntimeError("the collector is not running")

        async def read() -> dict:
            return runner.app[GUARD_KEY].counters()

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(timeout=30)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()

    def stop(self) -> None:
        """Stop serving and close the database; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._stop_loop()
        self.storage.close()

    def __enter__(self) -> "RunningCollector":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_collector(config: CollectorConfig) -> RunningCollector:
    """Start a collector in a background thread of this process (port 0: a free port) and return it."""
    return RunningCollector(config)._start()


class CollectorProcess(_Queries):
    """A collector running as a child process (``python -m aop_client.collector``)."""

    def __init__(self, config: CollectorConfig, popen: subprocess.Popen, url: str, temp_dir: Optional[str]) -> None:
        self.config = config
        self.api_key = config.api_key
        self.org_salt_key = config.org_salt_key
        self.url = url
        self.process = popen
        self.pid = popen.pid
        self._temp_dir = temp_dir
        self.storage = CollectorStorage(config.db_path, checkpoints=False)  # the child checkpoints its database

    def __repr__(self) -> str:
        return f"CollectorProcess(pid={self.pid}, url={self.url!r}, db_path={self.config.db_path!r})"

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the child's fault configuration through POST /api/v1/_faults."""
        request = urllib.request.Request(
            self.url + "/api/v1/_faults", data=faults_to_json(faults).encode(), method="POST",
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            if answer.status != 200:
                raise TransportError(f"collector refused the fault configuration: HTTP {answer.status}",
                                     status=answer.status, retryable=False)

    def connections(self) -> dict:
        """The connection guard's counters, from GET /api/v1/stats (whose own connection counts in ``open``)."""
        request = urllib.request.Request(self.url + "/api/v1/stats",
                                         headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())["connections"]

    def kill(self) -> None:
        """SIGKILL the child (a crash: nothing is flushed beyond what SQLite committed)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM the child, wait for it, close the reader; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.storage.close()
        if self._temp_dir is not None:  # a database we invented: nobody can ask for it any more
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> "CollectorProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _read_ready_line(popen: subprocess.Popen, timeout: float) -> str:
    lines: list[str] = []
    stdout = popen.stdout
    if stdout is None:
        raise RuntimeError("the collector process has no stdout pipe")
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = lines[0] if lines else ""
    if not line.startswith(READY_PREFIX):
        popen.kill()
        popen.wait(timeout=30)
        raise TransportError(f"collector process did not start within {timeout} s (said {line.strip()[:200]!r})",
                             retryable=False)
    return line[len(READY_PREFIX):].strip()


def start_collector_process(config: CollectorConfig, *, timeout: float = 30.0,
                            preexec_fn: Any = None) -> CollectorProcess:
    """Start a collector as a child process (secrets passed in its environment, not argv).

    ``preexec_fn`` runs in the child before it starts (e.g. to lower its RLIMIT_NOFILE in a test).
    """
    temp_dir = None
    if config.db_path is None:
        temp_dir = tempfile.mkdtemp(prefix="aop-collector-")
        config = dataclasses.replace(config, db_path=os.path.join(temp_dir, "collector.sqlite3"))
    config = dataclasses.replace(config, allow_fault_control=True)
    env = dict(os.environ)
    env["AOP_COLLECTOR_API_KEY"] = config.api_key
    if config.org_salt_key is not None:
        env["AOP_COLLECTOR_ORG_SALT_KEY"] = config.org_salt_key
    env["AOP_COLLECTOR_FAULTS"] = faults_to_json(config.faults)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", "aop_client.collector", "--host", config.host, "--port", str(config.port),
            "--db", str(config.db_path), "--max-body-bytes", str(config.max_body_bytes),
            "--max-decompressed-bytes", str(config.max_decompressed_bytes),
            "--signature-tolerance", str(config.signature_tolerance), "--enable-fault-control",
            "--header-timeout", repr(config.header_timeout), "--body-timeout", repr(config.body_timeout),
            "--body-min-rate", str(config.body_min_rate), "--keepalive-timeout", repr(config.keepalive_timeout),
            "--max-connections", str(config.max_connections), "--ws-heartbeat", repr(config.ws_heartbeat)]
    if not config.enable_streaming:
        argv.append("--no-streaming")
    popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    url = _read_ready_line(popen, timeout)
    return CollectorProcess(config, popen, url, temp_dir)
