"""The exception tree: every error aop_client raises on purpose derives from AOPError.

Errors are translated at the boundaries (a urllib3 or OS error becomes one of
these, with the original kept as ``__cause__``). Every class pickles with its
attributes, so an error raised in a worker process survives the trip back
through ``multiprocessing`` or ``concurrent.futures``.

    AOPError
    +-- ConfigError          (also ValueError)  bad ClientConfig field or AOP_* variable
    +-- ValidationError      (also ValueError)  an event or payload that is not acceptable
    +-- ToonParseError       (also ValueError)  parse_toon could not read its input
    +-- SignatureError                          an event or request signature does not verify
    +-- StoreError           (also OSError)     the on-disk store cannot do what was asked
    |   +-- StoreFullError                      a bound was reached and the policy says refuse
    |   +-- FencedError                         a deposed flusher tried to change the store
    +-- TransportError                          the server could not be reached or refused
    +-- StreamingUnavailableError (also ImportError) the ``streaming`` extra is missing
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = [
    "AOPError",
    "ConfigError",
    "ValidationError",
    "ToonParseError",
    "SignatureError",
    "StoreError",
    "StoreFullError",
    "FencedError",
    "TransportError",
    "StreamingUnavailableError",
]


def _rebuild(cls: "type[AOPError]", args: tuple[object, ...], state: dict[str, object]) -> "AOPError":
    err: AOPError
    if issubclass(cls, OSError):  # OSError fills errno/strerror from args in __new__
        os_err = OSError.__new__(cls, *args)
        OSError.__init__(os_err, *args)
        err = os_err
    else:
        err = Exception.__new__(cls)
        Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class AOPError(Exception):
    """Root of every error that aop_client raises on purpose."""

    def __reduce__(self) -> tuple[Callable[..., AOPError], tuple[type[AOPError], tuple[object, ...], dict[str, object]]]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ConfigError(AOPError, ValueError):
    """A configuration field or ``AOP_*`` environment variable has a bad value.

    ``field`` names the (first) offending field; ``fields`` every one of them when
    several are at fault together (a spool bound to other credentials), else ``(field,)``.
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None,
                 fields: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.fields: tuple[str, ...] = fields if fields is not None else (() if field is None else (field,))


class ValidationError(AOPError, ValueError):
    """An event or payload is not acceptable; ``field`` names the offending path."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class ToonParseError(AOPError, ValueError):
    """``parse_toon`` could not read its input; ``line``/``column`` locate the problem."""

    def __init__(
        self,
        reason: str,
        *,
        line: int | None = None,
        column: int | None = None,
        source_format: str | None = None,
    ) -> None:
        where = ""
        if line is not None:
            where = f" at line {line}" + (f", column {column}" if column is not None else "")
        fmt = f" ({source_format})" if source_format else ""
        super().__init__(f"cannot parse trace input{fmt}{where}: {reason}")
        self.reason = reason
        self.line = line
        self.column = column
        self.source_format = source_format


class SignatureError(AOPError):
    """An event or request signature is missing, malformed, stale, or does not verify."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreError(AOPError, OSError):
    """The on-disk store could not perform an operation (I/O error, bad directory...)."""


class StoreFullError(StoreError):
    """The store reached ``max_buffer_size`` or its byte bound and the policy refuses."""


class FencedError(StoreError):
    """A flusher whose election epoch is stale tried to acknowledge or move events."""


class TransportError(AOPError):
    """The server could not be reached, timed out, or answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class StreamingUnavailableError(AOPError, ImportError):
    """WebSocket streaming needs the ``streaming`` extra: ``pip install 'aop-client[streaming]'``."""
