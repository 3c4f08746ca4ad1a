"""ClientConfig: every setting of the client, its default, its validation and its AOP_* variable.

The configuration is an immutable value checked once, at construction: a bad
field raises :class:`~aop_client.errors.ConfigError` naming the field (or the
environment variable) and the bad value. ``repr()`` never shows ``api_key`` or
``org_salt_key``. ``ClientConfig.from_env()`` reads ``AOP_<FIELD>`` for every
scalar field; keyword arguments given to it override the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, get_type_hints
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["ClientConfig", "default_spool_root", "normalized_base_url", "public_base_url"]

RedactionHook = Callable[[dict[str, Any]], Optional[dict[str, Any]]]
PreSendHook = Callable[[dict[str, Any]], None]
PostSendHook = Callable[[dict[str, Any], bool], None]

_SECRET_FIELDS = frozenset({"api_key", "org_salt_key"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_CHOICES = {
    "durability": ("process", "fsync"),
    "buffer_full_policy": ("drop_newest", "drop_oldest", "block"),
    "streaming_mode": ("websocket", "http"),
}


def default_spool_root() -> Path:
    """The folder under which default spool directories live ($XDG_STATE_HOME or ~/.local/state)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "aop_client" / "spool"


def normalized_base_url(url: str) -> str:
    """base_url as the spool identity compares it: scheme and host lower-case, no default port,
    no user info, no trailing slash (``HTTP://Host:80/`` and ``http://host`` name one server)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}{path}{query}"


def public_base_url(url: str) -> str:
    """:func:`normalized_base_url` without its query (which may hold a token): what is written or shown in clear."""
    return normalized_base_url(url).split("?", 1)[0]


def default_spool_tag(base_url: str, api_key: str, org_salt_key: Optional[str]) -> str:
    """The folder name of a default spool: 16 hex digits of SHA-256 over (base_url, api_key, salt).

    The salt is part of it, so two deployments rotating ``org_salt_key`` (same server, same
    key) get two spools, each drained with its own salt. (Earlier releases made the tag of
    base_url and api_key only: :mod:`aop_client.spool_identity` moves such spools.)
    """
    text = json.dumps(["aop-client default spool v2", normalized_base_url(base_url), api_key, org_salt_key])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ClientConfig:
    """All settings of an AOPClient; see docs/configuration.md for each field."""

    # Identity and server
    api_key: str = ""
    base_url: str = "http://localhost:8000"
    agent_id: int = 0

    # Batching
    batch_size: int = 100
    batch_interval: float = 5.0
    max_buffer_size: int = 1_000_000
    max_buffer_bytes: int = 512 * 2**20
    buffer_full_policy: str = "drop_newest"
    buffer_block_timeout: float = 1.0
    max_batch_bytes: int = 4 * 2**20
    max_event_bytes: int = 1_000_000
    max_in_flight: int = 1  # batch POSTs on the wire at once (raise it for a server with several workers)

    # Retry
    max_retries: int = 3
    retry_backoff_base: float = 1.0
    retry_backoff_max: float = 60.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    gzip_threshold: int = 1024

    # The durable store (buffer, fallback and replay source in one)
    spool_dir: Optional[str] = None
    durability: str = "process"
    retention_seconds: float = 86_400.0
    retention_bytes: int = 256 * 2**20

    # Fallback files
    enable_local_fallback: bool = False
    local_fallback_dir: str = "./aop_fallback"

    # Replay files
    enable_local_replay: bool = False
    replay_dir: str = "./aop_replay"
    seed: Optional[int] = None

    # Streaming
    enable_streaming: bool = False
    streaming_url: Optional[str] = None
    streaming_mode: str = "websocket"

    # Security
    org_salt_key: Optional[str] = None
    verify_ssl: bool = True

    # Diagnostics
    debug: bool = False  # log every batch outcome at INFO (status, counts, latency; never event content)

    # Hooks
    redaction_hook: Optional[RedactionHook] = field(default=None, compare=False)
    pre_send_hook: Optional[PreSendHook] = field(default=None, compare=False)
    post_send_hook: Optional[PostSendHook] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name))
        if self.retry_backoff_base > self.retry_backoff_max:
            raise ConfigError(
                f"retry_backoff_base={self.retry_backoff_base!r} is larger than "
                f"retry_backoff_max={self.retry_backoff_max!r}",
                field="retry_backoff_base",
                value=self.retry_backoff_base,
            )

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                shown = "'***'" if value else repr(value)
            elif callable(value):
                shown = getattr(value, "__qualname__", type(value).__name__)
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"ClientConfig({', '.join(parts)})"

    __str__ = __repr__

    # -- derived values --

    @property
    def spool_path(self) -> Path:
        """Where the durable store lives: spool_dir, or a default per (base_url, api_key, org_salt_key)."""
        if self.spool_dir:
            return Path(self.spool_dir)
        return default_spool_root() / default_spool_tag(self.base_url, self.api_key, self.org_salt_key)

    @property
    def effective_streaming_url(self) -> Optional[str]:
        """streaming_url, or the WebSocket URL derived from base_url (ws[s]://host/ws/trace/)."""
        if self.streaming_url:
            return self.streaming_url
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}/ws/trace/"

    def replace(self, **changes: Any) -> "ClientConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # -- environment --

    @classmethod
    def from_env(
        cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any
    ) -> "ClientConfig":
        """Build a config from AOP_<FIELD> variables (every scalar field); overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, kind in _scalar_fields().items():
            var = f"AOP_{name.upper()}"
            if var in env and name not in overrides:
                values[name] = _parse_env(var, env[var], kind)
        values.update(overrides)
        return cls(**values)


# -- helpers --


def _scalar_fields() -> dict[str, type]:
    """Field name -> base type (str, int, float, bool) for every non-hook field."""
    hints = get_type_hints(ClientConfig)
    out: dict[str, type] = {}
    for f in fields(ClientConfig):
        kind = hints[f.name]
        args = getattr(kind, "__args__", None)
        if args:  # Optional[X]
            kind = next(a for a in args if a is not type(None))
        if kind in (str, int, float, bool):
            out[f.name] = kind
    return out


def _parse_env(var: str, raw: str, kind: type) -> Any:
    text = raw.strip()
    if kind is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{var}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)",
                          field=var, value=raw)
    if kind is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not an integer", field=var, value=raw) from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a number", field=var, value=raw) from None
    return raw


def _fail(name: str, value: Any, why: str) -> None:
    shown = "'***'" if name in _SECRET_FIELDS else repr(value)
    raise ConfigError(f"{name}={shown} {why}", field=name, value=None if name in _SECRET_FIELDS else value)


_POSITIVE_INT = {"batch_size", "max_buffer_size", "max_buffer_bytes", "max_batch_bytes",
                 "max_event_bytes", "max_in_flight"}
_NON_NEGATIVE_INT = {"max_retries", "gzip_threshold", "retention_bytes"}
_POSITIVE_FLOAT = {"batch_interval", "retry_backoff_max", "connect_timeout", "read_timeout"}
_NON_NEGATIVE_FLOAT = {"retry_backoff_base", "buffer_block_timeout", "retention_seconds"}
_BOOLS = {"enable_local_fallback", "enable_local_replay", "enable_streaming", "verify_ssl", "debug"}
_HOOKS = {"redaction_hook", "pre_send_hook", "post_send_hook"}


def _check_field(name: str, value: Any) -> None:
    if name in _POSITIVE_INT or name in _NON_NEGATIVE_INT or name == "agent_id":
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(name, value, "must be an integer")
        if name in _POSITIVE_INT and value < 1:
            _fail(name, value, "must be >= 1")
        if value < 0:
            _fail(name, value, "must be >= 0")
    elif name in _POSITIVE_FLOAT or name in _NON_NEGATIVE_FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(name, value, "must be a finite number")
        if name in _POSITIVE_FLOAT and value <= 0:
            _fail(name, value, "must be > 0")
        if value < 0:
            _fail(name, value, "must be >= 0")
    elif name in _BOOLS:
        if not isinstance(value, bool):
            _fail(name, value, "must be True or False")
    elif name in _HOOKS:
        if value is not None and not callable(value):
            _fail(name, value, "must be a callable or None")
    elif name in _CHOICES:
        if value not in _CHOICES[name]:
            _fail(name, value, f"must be one of {', '.join(_CHOICES[name])}")
    elif name == "base_url":
        _check_url(name, value, ("http", "https"))
    elif name == "streaming_url":
        if value is not None:
            _check_url(name, value, ("ws", "wss", "http", "https"))
    elif name in ("api_key", "local_fallback_dir", "replay_dir"):
        if not isinstance(value, str):
            _fail(name, value, "must be a string")
    elif name in ("org_salt_key", "spool_dir"):
        if value is not None and (not isinstance(value, str) or not value):
            _fail(name, value, "must be a non-empty string or None")
    elif name == "seed":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            _fail(name, value, "must be an integer or None")


def _check_url(name: str, value: Any, schemes: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        _fail(name, value, "must be a URL string")
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        _fail(name, value, f"must be an absolute URL with scheme {'/'.join(schemes)}")
