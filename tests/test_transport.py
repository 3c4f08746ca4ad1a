"""Tests of aop_client.transport against a real loopback HTTP server (a tiny programmable fake)."""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import time
from typing import Callable, Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client._version import __version__
from aop_client.core.outcome import Delivered, Retry, classify
from aop_client.errors import ConfigError
from aop_client.signing import verify_request
from aop_client.testing import wait_until
from aop_client.transport import BATCH_PATH, HttpTransport, _gzip_packer

API_KEY = "aop_test_key_123"
SALT = "org-salt-xyz"


class FakeServer:
    """A loopback HTTP server whose answer is a replaceable function; it records every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.respond: Callable[[http.server.BaseHTTPRequestHandler, dict], None] = self.ok
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                request = {"path": self.path, "headers": dict(self.headers), "raw": raw, "body": body, "at": time.time()}
                owner.requests.append(request)
                owner.respond(self, request)

        class QuietServer(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # clients that hang up early are part of these tests

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @staticmethod
    def send(handler, status: int, body: bytes, content_type: str = "application/json", extra: dict | None = None) -> None:
        """Write one complete answer."""
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    def ok(self, handler, request: dict) -> None:
        """The protocol's 200: every event accepted."""
        events = orjson.loads(request["body"]).get("events", [])
        self.send(handler, 200, orjson.dumps({"accepted": len(events), "duplicates": 0, "rejected": []}))

    def close(self) -> None:
        """Stop serving and free the port."""
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def make_body(n: int, pad: int = 0) -> tuple[bytes, list[str]]:
    """A batch body of n small events and their ids."""
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]
    events = [{"event_id": i, "seq": k + 1, "payload": {"pad": "x" * pad}} for k, i in enumerate(ids)]
    return orjson.dumps({"batch_id": "b-1", "events": events}), ids


def test_headers_follow_the_protocol(server: FakeServer) -> None:
    """Authorization, Content-Type, Idempotency-Key, User-Agent and a verifying X-AOP-Signature are sent."""
    transport = HttpTransport(server.url, API_KEY, SALT, gzip_threshold=10**9)
    body, ids = make_body(3)
    now = time.time()
    response = transport.post_batch("batch-abc", body, now=now)
    assert response.status == 200
    request = server.requests[0]
    headers = request["headers"]
    assert request["path"] == BATCH_PATH
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == "batch-abc"
    assert headers["User-Agent"] == f"aop-client/{__version__}"
    assert "Content-Encoding" not in headers and request["raw"] == body
    verify_request(request["body"], headers["X-AOP-Signature"], SALT, now=now)
    assert isinstance(classify(response.status, response.headers, response.body, batch_event_ids=ids, now=now), Delivered)


def test_large_bodies_are_gzipped_and_signed_uncompressed(server: FakeServer) -> None:
    """Over the threshold the wire body is gzip; the signature covers the uncompressed bytes."""
    transport = HttpTransport(server.url, API_KEY, SALT, gzip_threshold=1024)
    body, _ = make_body(50, pad=100)
    now = time.time()
    response = transport.post_batch("b-2", body, now=now)
    request = server.requests[0]
    assert response.status == 200 and response.sent_bytes == len(request["raw"]) < len(body)
    assert request["headers"]["Content-Encoding"] == "gzip" and request["body"] == body
    verify_request(body, request["headers"]["X-AOP-Signature"], SALT, now=now)


def test_signature_is_fresh_on_each_attempt_and_key_is_stable(server: FakeServer) -> None:
    """Two attempts of one batch keep the Idempotency-Key and carry their own t."""
    transport = HttpTransport(server.url, API_KEY, SALT)
    body, _ = make_body(2)
    transport.post_batch("same", body, now=1_700_000_000.0)
    transport.post_batch("same", body, now=1_700_000_100.0)
    first, second = (r["headers"] for r in server.requests)
    assert first["Idempotency-Key"] == second["Idempotency-Key"] == "same"
    assert first["X-AOP-Signature"].startswith("t=1700000000,")
    assert second["X-AOP-Signature"].startswith("t=1700000100,")


def test_no_signature_without_salt(server: FakeServer) -> None:
    """Without org_salt_key no X-AOP-Signature header is sent."""
    HttpTransport(server.url, API_KEY).post_batch("b", make_body(1)[0], now=time.time())
    assert "X-AOP-Signature" not in server.requests[0]["headers"]


def test_run_complete_posts_to_the_run_path(server: FakeServer) -> None:
    """post_run_complete sends the section-3 document to /runs/<run_id>/complete, signed."""
    server.respond = lambda h, r: server.send(h, 200, b'{"complete": true, "missing": []}')
    transport = HttpTransport(server.url, API_KEY, SALT)
    payload = {"run_id": "r-1", "agent_id": 7, "event_count": 3, "last_seq": 3}
    response = transport.post_run_complete("r-1", payload, now=time.time())
    request = server.requests[0]
    assert response.status == 200 and orjson.loads(response.body) == {"complete": True, "missing": []}
    assert request["path"] == "/api/v1/traces/runs/r-1/complete" and orjson.loads(request["body"]) == payload
    verify_request(request["body"], request["headers"]["X-AOP-Signature"], SALT, now=time.time())


def test_redirects_are_not_followed(server: FakeServer) -> None:
    """A 307 comes back as is (redirects off), to be classified by the caller."""
    server.respond = lambda h, r: server.send(h, 307, b"", extra={"Location": "http://127.0.0.1:1/x"})
    response = HttpTransport(server.url, API_KEY).post_batch("b", b"{}", now=time.time())
    assert response.status == 307 and len(server.requests) == 1


def test_hanging_server_times_out_as_status_none(server: FakeServer) -> None:
    """A server that never answers gives status None within about read_timeout (no retry inside)."""
    server.respond = lambda h, r: server.release.wait(30)
    transport = HttpTransport(server.url, API_KEY, connect_timeout=1.0, read_timeout=0.5)
    started = time.monotonic()
    response = transport.post_batch("b", b"{}", now=time.time())
    elapsed = time.monotonic() - started
    assert response.status is None and "Timeout" in (response.error or "")
    assert elapsed < 5.0 and len(server.requests) == 1


def test_trickling_body_is_cut_at_the_read_deadline(server: FakeServer) -> None:
    """A 200 whose body trickles forever is abandoned once reading passes read_timeout."""

    def trickle(handler, request) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "1000000")
        handler.end_headers()
        for _ in range(400):
            if server.release.wait(0.05):
                return
            try:
                handler.wfile.write(b" " * 1000)
                handler.wfile.flush()
            except OSError:
                return

    server.respond = trickle
    transport = HttpTransport(server.url, API_KEY, read_timeout=1.0, max_response_bytes=10**8)
    started = time.monotonic()
    response = transport.post_batch("b", b"{}", now=time.time())
    assert response.status is None and "read_timeout" in (response.error or "")
    assert time.monotonic() - started < 6.0


def test_connection_refused_is_status_none() -> None:
    """Nobody listening gives status None with the reason, not an exception."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    response = HttpTransport(f"http://127.0.0.1:{port}", API_KEY, connect_timeout=0.5).post_batch("b", b"{}", now=time.time())
    assert response.status is None and "Connection" in (response.error or "")


def test_huge_body_is_cut_and_never_acknowledged(server: FakeServer) -> None:
    """A 200 with a body over max_response_bytes is cut at the limit and classified as Retry."""
    big = b'{"accepted": 1}' + b" " * 5_000_000
    server.respond = lambda h, r: server.send(h, 200, big)
    transport = HttpTransport(server.url, API_KEY, max_response_bytes=65_536)
    response = transport.post_batch("b", b"{}", now=time.time())
    assert response.status == 200 and response.truncated and len(response.body) == 65_536
    outcome = classify(response.status, response.headers, response.body, batch_event_ids=["e"], now=time.time(),
                       truncated=response.truncated)
    assert isinstance(outcome, Retry)


@pytest.mark.parametrize("body, content_type", [(b"\x00\xffgarbage{", "application/json"),
                                                 (b"<html>502</html>", "text/html"),
                                                 (b'{"accepted": 1}', "text/plain")])
def test_garbage_and_wrong_content_type(server: FakeServer, body: bytes, content_type: str) -> None:
    """Odd answers come back intact; only a well-formed batch document acknowledges (content type ignored)."""
    server.respond = lambda h, r: server.send(h, 200, body, content_type=content_type)
    response = HttpTransport(server.url, API_KEY).post_batch("b", b"{}", now=time.time())
    assert response.status == 200 and response.body == body
    outcome = classify(200, response.headers, response.body, batch_event_ids=["e"], now=time.time())
    assert isinstance(outcome, Delivered) == (body == b'{"accepted": 1}')


def test_connection_is_reused_across_posts(server: FakeServer) -> None:
    """Consecutive posts reuse one pooled keep-alive connection."""
    transport = HttpTransport(server.url, API_KEY)
    for i in range(5):
        assert transport.post_batch(f"b{i}", b"{}", now=time.time()).status == 200
    ports = {r["headers"].get("Host") for r in server.requests}
    assert len(server.requests) == 5 and len(ports) == 1
    assert transport._manager().connection_from_url(server.url).num_connections == 1


def test_repr_never_shows_secrets() -> None:
    """repr and str of a transport hide api_key and org_salt_key."""
    transport = HttpTransport("http://127.0.0.1:1", "secret-api-key", "secret-salt")
    assert "secret" not in repr(transport) and "secret" not in str(transport)


@pytest.mark.parametrize("kwargs, field", [({"base_url": "ftp://x"}, "base_url"), ({"base_url": "nohost"}, "base_url"),
                                           ({"read_timeout": 0}, "read_timeout"), ({"gzip_threshold": -1}, "gzip_threshold"),
                                           ({"gzip_level": 10}, "gzip_level")])
def test_bad_arguments_raise_config_error(kwargs: dict, field: str) -> None:
    """Bad constructor arguments raise ConfigError naming the field."""
    args = {"base_url": "http://127.0.0.1:1", "api_key": "k", **kwargs}
    with pytest.raises(ConfigError) as info:
        HttpTransport(**args)
    assert info.value.field == field


def _self_signed_cert(directory) -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1 (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_verify_ssl_refuses_an_untrusted_certificate_and_can_be_turned_off(server: FakeServer, tmp_path) -> None:
    """verify_ssl=True gives status None on a self-signed server; verify_ssl=False gets the answer."""
    import ssl
    import warnings

    cert, key = _self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    url = server.url.replace("http://", "https://")
    refused = HttpTransport(url, API_KEY, connect_timeout=2.0).post_batch("b", b"{}", now=time.time())
    assert refused.status is None and "SSL" in (refused.error or "") and server.requests == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # urllib3 warns about unverified HTTPS, as it should
        accepted = HttpTransport(url, API_KEY, verify_ssl=False).post_batch("b", b'{"events": []}', now=time.time())
    assert accepted.status == 200 and len(server.requests) == 1


def test_forked_child_uses_its_own_connection(server: FakeServer) -> None:
    """A transport used before fork (lock held at fork time) works in the child on a new connection."""
    import os

    transport = HttpTransport(server.url, API_KEY)
    assert transport.post_batch("parent", b"{}", now=time.time()).status == 200
    with transport._lock:
        pid = os.fork()
        if pid == 0:
            try:
                status = transport.post_batch("child", b"{}", now=time.time()).status
                os._exit(0 if status == 200 else 1)
            except BaseException:
                os._exit(2)
    reaped = None
    try:
        reaped = wait_until(lambda: (lambda r: r if r[0] else None)(os.waitpid(pid, os.WNOHANG)), timeout=10)
    finally:
        if reaped is None:  # a hung child is a failure; never leave it behind
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(reaped[1]) == 0
    assert [r["headers"]["Idempotency-Key"] for r in server.requests] == ["parent", "child"]


@given(body=st.binary(max_size=20_000), level=st.integers(0, 9))
@settings(max_examples=60, deadline=None)
def test_every_gzip_level_writes_standard_gzip(body: bytes, level: int) -> None:
    """Whatever compressor a level picks (ISA-L for 1-3, zlib otherwise), the stdlib gunzips it back."""
    packer = _gzip_packer(level)
    assert gzip.decompress(packer.compress(body) + packer.flush()) == body
