"""The WSGI app of test_gunicorn: one AOPClient created and started at import, events emitted per request.

Under ``gunicorn --preload`` the import (and so the client, its store and its
flusher thread) happens in the master before the workers are forked: exactly
the situation the fork-safety issue is about.

Routes: ``/emit?n=K`` emits a run of K events and answers
``{"pid", "ids", "is_flusher"}``; ``/emit-and-die?n=K`` emits K events and then
SIGKILLs its own worker before answering (the ids are in the id log).
"""

from __future__ import annotations

import json
import os
import signal
from urllib.parse import parse_qs

import aop_it_support

CLIENT = aop_it_support.make_client().start()


def app(environ, start_response):
    """Plain WSGI callable."""
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    count = int(query.get("n", ["3"])[0])
    if path == "/emit":
        ids = aop_it_support.emit_run(CLIENT, count, "gunicorn")
        body = json.dumps({"pid": os.getpid(), "ids": ids,
                           "is_flusher": CLIENT.get_stats()["is_flusher"]}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/emit-and-die":
        aop_it_support.emit_run(CLIENT, count, "gunicorn-killed")
        os.kill(os.getpid(), signal.SIGKILL)
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
