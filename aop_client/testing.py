"""Helpers for testing code that uses aop_client: condition waits and a real collector fixture.

Modelled on ``structlog.testing``: importable without pytest or aiohttp, and a
pytest plugin when pytest is present (``pytest_plugins = ["aop_client.testing"]``)::

    def test_delivery(aop_collector):
        client = AOPClient(api_key=aop_collector.api_key, base_url=aop_collector.url,
                           org_salt_key=aop_collector.org_salt_key, ...)
        ...
        wait_until(lambda: len(aop_collector.event_ids()) == 3, timeout=10)

Fixtures:

* ``aop_collector``: a reference collector (``aop_client.collector``) started
  on a free loopback port with :data:`TEST_API_KEY` and
  :data:`TEST_ORG_SALT_KEY`, its SQLite file in ``tmp_path``, stopped afterwards.
* ``aop_collector_factory``: ``factory(**config_fields)`` or
  ``factory(CollectorConfig(...))`` starts more collectors (custom keys,
  faults, database path); every one is stopped afterwards. Pass
  ``process=True`` to run the collector in a separate process.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any, Callable, Optional, TypeVar

__all__ = ["wait_until", "TEST_API_KEY", "TEST_ORG_SALT_KEY"]

T = TypeVar("T")

#: The API key every fixture collector accepts (a test value, not a secret).
TEST_API_KEY = "aop-test-api-key"
#: The org salt key every fixture collector verifies signatures with (a test value).
TEST_ORG_SALT_KEY = "aop-test-org-salt-key"


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
    """Call ``predicate`` until it returns something truthy and return that; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            name = getattr(predicate, "__qualname__", repr(predicate))
            raise TimeoutError(f"condition {name} still false after {timeout} s (last value {result!r})")
        time.sleep(min(interval, remaining))


def _collector_factory(tmp_path_factory: Any) -> tuple[Callable[..., Any], Callable[[], None]]:
    from .collector import CollectorConfig, start_collector, start_collector_process

    started: list[Any] = []

    def factory(config: Any = None, *, process: bool = False, preexec_fn: Any = None, **fields: Any) -> Any:
        if config is None:
            fields.setdefault("api_key", TEST_API_KEY)
            fields.setdefault("org_salt_key", TEST_ORG_SALT_KEY)
            if fields.get("db_path") is None:
                fields["db_path"] = str(tmp_path_factory.mktemp("aop_collector") / "collector.sqlite3")
            fields.setdefault("port", 0)
            config = CollectorConfig(**fields)
        elif fields:
            raise TypeError("pass either a CollectorConfig or keyword fields, not both")
        if preexec_fn is not None and not process:
            raise TypeError("preexec_fn needs process=True")
        collector = start_collector_process(config, preexec_fn=preexec_fn) if process else start_collector(config)
        started.append(collector)
        return collector

    def stop_all() -> None:
        for collector in reversed(started):
            collector.stop()

    return factory, stop_all


_pytest: Optional[ModuleType]
try:
    import pytest as _pytest
except ImportError:  # pragma: no cover - the module must import without pytest
    _pytest = None

if _pytest is not None:

    @_pytest.fixture
    def aop_collector_factory(tmp_path_factory: Any) -> Any:
        """Start reference collectors with custom config; all are stopped at teardown."""
        factory, stop_all = _collector_factory(tmp_path_factory)
        try:
            yield factory
        finally:
            stop_all()

    @_pytest.fixture
    def aop_collector(aop_collector_factory: Any) -> Any:
        """A started reference collector on a free loopback port with the TEST_* keys."""
        return aop_collector_factory()
