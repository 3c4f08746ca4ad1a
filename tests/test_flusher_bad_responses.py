"""Bad answers from the server never crash the flusher and never lose events (real store, HTTP, election).

A loopback server misbehaves on a random share of requests (garbage JSON,
a huge body, a 200 with an HTML content type, a hanging connection, a dropped
connection, sometimes after it has already stored the batch) and otherwise
answers per protocol while recording every event id it accepted. The
flusher must keep running and, in the end, every event must be held by the
server and acknowledged in the store, with no dead letters.
"""

from __future__ import annotations

import gzip
import http.server
import random
import threading

import orjson
import pytest

from aop_client.core.backoff import RetryPolicy
from aop_client.election import FlusherElection
from aop_client.flusher import Flusher
from aop_client.store import DiskStore
from aop_client.testing import wait_until
from aop_client.transport import HttpTransport

MODES = ["garbage", "huge", "html", "hang", "drop", "truncated_json", "ok"]


class MisbehavingServer:
    """Answers per protocol, or with the bad answer chosen for the request; records accepted event ids."""

    def __init__(self, bad_share: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bad_share = bad_share
        self.lock = threading.Lock()
        self.received: dict[str, int] = {}  # event_id -> deliveries
        self.modes_used: list[str] = []
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                owner.handle(self, orjson.loads(body))

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def handle(self, handler, doc: dict) -> None:
        """Store (maybe), then answer well or badly."""
        with self.lock:
            if len(self.modes_used) < 2 * (len(MODES) - 1):  # every bad answer at least twice, then at random
                mode = MODES[len(self.modes_used) % (len(MODES) - 1)]
            else:
                mode = self.rng.choice(MODES[:-1]) if self.rng.random() < self.bad_share else "ok"
            store_first = mode == "ok" or self.rng.random() < 0.5
            self.modes_used.append(mode)
            if store_first:
                for event in doc["events"]:
                    self.received[event["event_id"]] = self.received.get(event["event_id"], 0) + 1
        if mode == "hang":
            self.release.wait(3)
            return
        if mode == "drop":
            handler.close_connection = True
            return
        body, content_type = {
            "ok": (orjson.dumps({"accepted": len(doc["events"]), "duplicates": 0, "rejected": []}), "application/json"),
            "garbage": (b"\x00\xff{not json", "application/json"),
            "huge": (b'{"accepted": 1, "pad": "' + b"x" * 3_000_000 + b'"}', "application/json"),
            "html": (b"<html><body>200 OK</body></html>", "text/html"),
            "truncated_json": (b'{"accepted": 3, "rejected": [', "application/json"),
        }[mode]
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            handler.wfile.write(body)
        except OSError:
            pass

    def close(self) -> None:
        """Stop serving."""
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("seed", [1, 2])
def test_bad_answers_never_crash_the_flusher_or_lose_events(tmp_path, seed: int) -> None:
    """Under 40% bad answers, all 600 events reach the server and are acknowledged; the flusher thread survives."""
    server = MisbehavingServer(bad_share=0.4, seed=seed)
    store = DiskStore(tmp_path / "spool")
    transport = HttpTransport(server.url, "key", "salt", read_timeout=0.3, connect_timeout=1.0,
                              max_response_bytes=1_000_000)
    flusher = Flusher(store, transport, FlusherElection(tmp_path / "spool"), batch_size=50, batch_interval=0.05,
                      retry_policy=RetryPolicy(max_retries=3, base=0.005, cap=0.02), rng=random.Random(seed))
    ids = []
    try:
        flusher.start()
        for i in range(600):
            event_id = f"00000000-0000-4000-8000-{i:012d}"
            body = orjson.dumps({"event_id": event_id, "run_id": "r", "seq": i + 1, "payload": {"i": i}})
            assert store.append(event_id, "r", i + 1, body).stored
            ids.append(event_id)
        flusher.wakeup()
        wait_until(lambda: flusher.flush(timeout=2.0), timeout=60)
        assert flusher._thread is not None and flusher._thread.is_alive()
        assert set(server.received) == set(ids)
        stats = store.stats()
        assert stats.pending == stats.in_flight == stats.fallback == stats.dead_letters == 0
        assert set(server.modes_used) >= {"garbage", "huge", "html", "hang", "drop", "ok"}
        assert flusher.stats()["delivered"] >= 600 and flusher.stats()["dead_letters"] == 0
    finally:
        assert flusher.stop(timeout=5)
        server.close()
        store.close()
