"""Connection bounds of the reference collector: how long a head, a body, an idle connection may take; how many.

aiohttp bounds the *size* of a request head (``max_line_size``,
``max_field_size``, ``max_headers``) and body (``client_max_size``), and
(in recent versions, from the connection's start) the idle time of a
keep-alive connection (``keepalive_timeout``), but nothing bounds
the *time* a client takes to send a head or a body, nor the number of open
connections: 70 sockets that send half a head hold 70 file descriptors until
the process has none left and ``accept()`` fails for everybody, health checks
included. :class:`ConnectionGuard` adds what is missing, at the level of the
connection:

* every accepted connection's aiohttp protocol is wrapped in a
  :class:`_Guarded` protocol (``GuardedSite`` listens with it) that notes, in
  O(1) per chunk, when the first byte of a request head arrives;
* an application middleware notes when a head is complete (a handler runs)
  and when the handler is done (the connection is idle again);
* :meth:`ConnectionGuard.read_body` notes when a handler reads a body;
* one sweep task, every ``tick`` seconds, closes a connection whose head is
  not complete ``header_timeout`` seconds after its first byte, and one idle
  (connected, or done with a request, and no byte of a next one) for
  ``keepalive_timeout`` seconds (a response still being written to a peer
  that does not read counts as idle); it answers ``408`` and closes a
  connection whose body is not complete after ``body_timeout`` seconds or
  arrives slower than ``body_min_rate`` bytes/s (after ``RATE_GRACE``
  seconds): the handler's read raises :class:`BodyTimeout`, so nothing of
  that body is stored or acknowledged;
* the site accepts connections itself (one at a time, ``loop.sock_accept``),
  so it never accepts more than the limit and never spins on ``EMFILE``.

A WebSocket (or a chunked stream) is a handler that runs long on purpose: no
timer of this module touches it; the WebSocket route's heartbeat bounds a
dead peer.

At most ``limit`` connections are open: ``max_connections``, lowered to what
the process's ``RLIMIT_NOFILE`` leaves (:func:`fd_budget`). A connection
beyond the limit makes room by closing the oldest idle or stalled connection
(no byte yet, or a head not complete), then the oldest one still sending a
body (408); when every connection is running a handler, the new one waits
(and the ones after it in the listen backlog) until one is done. So a flood
of stalled sockets never keeps ``/api/v1/health`` out.
:func:`raise_nofile_limit` raises the soft limit to the hard one at start.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
from typing import Any, Callable, Optional, cast

from aiohttp import web

from .config import CollectorConfig

__all__ = ["ConnectionGuard", "GuardedSite", "BodyTimeout", "GUARD_KEY", "fd_budget", "raise_nofile_limit",
           "RATE_GRACE", "FD_RESERVE"]

log = logging.getLogger("aop_client.collector")

RATE_GRACE = 2.0  # seconds of a body read before its rate is judged against body_min_rate
FD_RESERVE = 16  # descriptors kept for SQLite, the listening socket and the loop beyond those open at start
_LOG_EVERY = 60.0  # seconds between two log lines of one kind after the first
_ACCEPT_RETRY = 0.05  # seconds before accepting again after the process ran out of descriptors
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FEW = 256  # a connection limit lowered below this many is worth a WARNING
_IDLE, _HEAD, _ACTIVE = 0, 1, 2
_408 = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s")


class BodyTimeout(Exception):
    """Raised by a body read that the guard timed out (the connection is closed with 408)."""


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit when lower; the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)  # the kernel refuses "unlimited"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.warning("collector: cannot raise the open-file limit from %s to %s: %s", soft, target, e)
        return soft
    return target


def fd_budget() -> Optional[int]:
    """How many more descriptors this process may open, less FD_RESERVE; None when unknown."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        in_use = len(os.listdir("/proc/self/fd"))
    except (ImportError, OSError):
        return None
    return soft - in_use - FD_RESERVE


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol (``inner``) plus its phase and timestamps."""

    __slots__ = ("guard", "inner", "transport", "phase", "since", "body", "body_since")

    def __init__(self, guard: "ConnectionGuard", inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner: Any = inner
        self.transport: Optional[asyncio.Transport] = None
        self.phase = _IDLE
        self.since = 0.0
        self.body: Optional[web.BaseRequest] = None  # the request whose body a handler is reading
        self.body_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's connections are Transports
        self.since = self.guard.loop.time()  # idle from now
        self.inner.connection_made(transport)
        self.guard._admit(self)

    def data_received(self, data: bytes) -> None:
        if self.phase == _IDLE:  # the first byte of a request head: its header_timeout starts
            self.phase = _HEAD
            self.since = self.guard.loop.time()
        self.inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return self.inner.eof_received()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.guard._lost(self)
        self.body = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def close(self) -> None:
        """Close now (unsent data dropped): a stalled or idle connection."""
        self.guard.conns.pop(self.inner, None)
        if self.transport is not None:
            self.transport.abort()

    def refuse_body(self, why: str) -> None:
        """Fail the body read in progress with BodyTimeout, answer 408 and close."""
        request, self.body = self.body, None
        self.guard.conns.pop(self.inner, None)
        if request is not None:
            request.content.set_exception(BodyTimeout(why))
        if self.transport is not None and not self.transport.is_closing():
            reason = ('{"error": "%s"}' % why).encode()
            self.transport.write(_408 % (len(reason), reason))
            self.transport.close()  # after the 408 is sent; a peer that reads nothing is cut off soon after
            self.guard.loop.call_later(1.0, self.transport.abort)


class ConnectionGuard:
    """The connection bounds of one collector (see the module docstring); ``counters()`` for /api/v1/stats."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config  # header_timeout, body_timeout, body_min_rate, keepalive_timeout, max_connections
        self.limit = config.max_connections
        self.tick = min(1.0, max(0.05, min(config.header_timeout, config.body_timeout, config.keepalive_timeout) / 5))
        self.conns: dict[Any, _Guarded] = {}  # aiohttp protocol -> its connection, in order of arrival
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # set by start()
        self._counts = {"header_timeouts": 0, "idle_timeouts": 0, "body_timeouts": 0, "evicted": 0, "accept_waits": 0,
                        "accept_failures": 0}
        self._logged: dict[str, float] = {}
        self._sweeper: Optional[asyncio.Task] = None
        self._room = asyncio.Event()  # set whenever a connection closes

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the guard serves on (from :meth:`start`)."""
        if self._loop is None:
            raise RuntimeError("ConnectionGuard.start() has not run yet")
        return self._loop

    def start(self) -> None:
        """Fix the limit from the descriptors left, and start sweeping (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        budget = fd_budget()
        if budget is not None and budget < self.config.max_connections:
            self.limit = max(1, budget)
            log.log(logging.WARNING if self.limit < _FEW else logging.INFO,
                    "collector: serving at most %d connections, not max_connections=%d: the open-file limit "
                    "(RLIMIT_NOFILE) leaves no more; raise it (ulimit -n) to serve more", self.limit,
                    self.config.max_connections)
        self._sweeper = self.loop.create_task(self._sweep())

    def stop(self) -> None:
        """Stop sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def counters(self) -> dict:
        """Open connections, those reading a body, the limit, and how many were closed for each reason."""
        bodies = sum(1 for conn in self.conns.values() if conn.body is not None)
        return {"open": len(self.conns), "reading_bodies": bodies, "limit": self.limit, **self._counts}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The head is complete while a handler runs; idle again once it is done."""
        conn = self.conns.get(request.protocol)
        if conn is None:
            return await handler(request)
        conn.phase = _ACTIVE
        try:
            return await handler(request)
        finally:
            conn.phase, conn.since, conn.body = _IDLE, self.loop.time(), None
            self._room.set()  # an accept loop waiting for an idle connection to close may go on

    async def read_body(self, request: web.BaseRequest) -> bytes:
        """``request.read()`` under body_timeout and body_min_rate; raises BodyTimeout when they strike."""
        conn = self.conns.get(request.protocol)
        if conn is None:
            return await request.read()
        conn.body, conn.body_since = request, self.loop.time()
        try:
            return await request.read()
        finally:
            conn.body = None

    def _admit(self, conn: _Guarded) -> None:
        self.conns[conn.inner] = conn

    def _lost(self, conn: _Guarded) -> None:
        self.conns.pop(conn.inner, None)
        self._room.set()

    def _make_room(self) -> bool:
        """Close the oldest idle or stalled connection, else the oldest still sending a body; False if none."""
        victim = next((c for c in self.conns.values() if c.phase != _ACTIVE), None)
        if victim is not None:
            self._note("evicted", "closed the oldest idle or stalled connection to admit a new one: "
                                  "%d connections open, the limit" % self.limit)
            victim.close()
            return True
        victim = next((c for c in self.conns.values() if c.body is not None), None)
        if victim is not None:
            self._note("evicted", "closed the oldest connection still sending a body to admit a new one: "
                                  "%d connections open, the limit" % self.limit)
            victim.refuse_body("request body not received before the connection limit struck")
            return True
        return False

    async def accept(self, sock: socket.socket, inner_factory: Callable[[], asyncio.Protocol]) -> None:
        """Accept connections on ``sock`` one at a time, never more than ``limit`` open (the site's task).

        A connection accepted at the limit is held (one descriptor beyond it) until room is made for it.
        """
        loop = self.loop
        while True:
            try:
                client, _ = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client went away while queued
                self._note("accept_failures", f"cannot accept a connection: {e.strerror or e}; retrying")
                if e.errno in _OUT_OF_RESOURCES:
                    self._make_room()  # out of descriptors: an idle or stalled connection gives one back
                await asyncio.sleep(_ACCEPT_RETRY)
                continue
            try:
                while len(self.conns) >= self.limit and not self._make_room():
                    self._note("accept_waits", "a new connection waits: %d connections open, the limit, all "
                                               "running a request" % self.limit)
                    self._room.clear()
                    await self._room.wait()
                await loop.connect_accepted_socket(lambda: _Guarded(self, inner_factory()), client)
            except OSError:
                client.close()
            except BaseException:
                client.close()
                raise

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = self.loop.time()
            for conn in list(self.conns.values()):
                if conn.phase == _HEAD and now - conn.since > self.config.header_timeout:
                    self._note("header_timeouts", "closed a connection whose request head was not complete "
                                                  "within header_timeout=%gs" % self.config.header_timeout)
                    conn.close()
                elif conn.phase == _IDLE and now - conn.since > self.config.keepalive_timeout:
                    self._note("idle_timeouts", "closed a connection idle for keepalive_timeout=%gs"
                               % self.config.keepalive_timeout)
                    conn.close()
                elif conn.body is not None and not conn.body.content.is_eof():
                    self._judge_body(conn, conn.body, now)

    def _judge_body(self, conn: _Guarded, body: web.BaseRequest, now: float) -> None:
        elapsed = now - conn.body_since
        if elapsed > self.config.body_timeout:
            why = "request body not received within body_timeout=%gs" % self.config.body_timeout
        elif (self.config.body_min_rate and elapsed > RATE_GRACE
              and body.content.total_bytes < self.config.body_min_rate * elapsed):
            why = "request body arrives slower than body_min_rate=%d bytes/s" % self.config.body_min_rate
        else:
            return
        self._note("body_timeouts", "answered 408 and closed: " + why)
        conn.refuse_body(why)

    def _note(self, kind: str, message: str) -> None:
        """Count one closing; log the first of each kind, then at most one line per _LOG_EVERY seconds."""
        self._counts[kind] += 1
        now = self.loop.time()
        last = self._logged.get(kind)
        if last is None or now - last >= _LOG_EVERY:
            self._logged[kind] = now
            log.warning("collector: %s (%d so far)", message, self._counts[kind])


GUARD_KEY = web.AppKey("aop_collector_guard", ConnectionGuard)


class _Listener(asyncio.AbstractServer):
    """The server aiohttp's site holds: one accept task per listening socket.

    BaseSite.stop() and runner.addresses use ``close()`` and ``sockets``; the rest
    of asyncio's server interface is here so that it is one.
    """

    def __init__(self, sockets: list[socket.socket], tasks: "list[asyncio.Task[None]]") -> None:
        self.sockets = sockets
        self._tasks = tasks

    def close(self) -> None:
        for sock, task in zip(self.sockets, self._tasks):
            task.cancel()  # the socket is closed once its accept loop has let go of it
            task.add_done_callback(functools.partial(_close_socket, sock))

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._tasks[0].get_loop()

    def is_serving(self) -> bool:
        return any(not task.done() for task in self._tasks)

    async def start_serving(self) -> None:
        """Nothing to do: the accept loops run from the start."""

    async def serve_forever(self) -> None:
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _close_socket(sock: socket.socket, _task: object) -> None:
    sock.close()


def listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Non-blocking sockets listening on every address ``host`` resolves to, as asyncio's create_server binds them.

    Raises OSError (none left open) when one cannot be bound.
    """
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                  flags=socket.AI_PASSIVE):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: the IPv4 address of the same host is its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GuardedSite(web.BaseSite):
    """A TCP site whose connections the app's ConnectionGuard accepts and watches (``web.TCPSite`` otherwise)."""

    __slots__ = ("_host", "_port", "_guard")

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, host: str, port: int,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard = host, port, guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        sockets = listen(self._host, self._port, self._backlog)
        self._guard.start()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._guard.accept(sock, server)) for sock in sockets]
        self._server = _Listener(sockets, tasks)

    async def stop(self) -> None:
        self._guard.stop()
        await super().stop()
