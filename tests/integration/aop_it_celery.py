"""The celery app of test_celery: kombu's filesystem broker, no result backend, a client made at import.

The worker's main process imports this module, so the AOPClient (store and
flusher thread) exists before the prefork pool forks its children; the
``emit`` task runs in those children. Broker folders come from ``AOP_IT_BROKER``.
"""

from __future__ import annotations

import os

import aop_it_support
from aop_it_celery_config import make_app


app = make_app(os.environ["AOP_IT_BROKER"])
CLIENT = aop_it_support.make_client().start()


@app.task(name="aop_it.emit")
def emit(count: int) -> None:
    """Emit one run of count events from this pool child (ids go to the id log)."""
    aop_it_support.emit_run(CLIENT, count, "celery")
