"""Shared plumbing of the ``aop`` commands: exit codes, one-line errors, config and store opening.

Every command reports a failure by raising :class:`CliError` (or letting an
:class:`~aop_client.errors.AOPError` escape); :func:`aop_client.cli.main`
turns it into a single ``aop: error: ...`` line on stderr and the documented
exit code. Nothing here deletes or changes stored data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from ..errors import (
    AOPError,
    ConfigError,
    SignatureError,
    StoreError,
    ToonParseError,
    TransportError,
    ValidationError,
)

if TYPE_CHECKING:
    from ..config import ClientConfig

__all__ = [
    "EXIT_OK", "EXIT_UNDELIVERED", "EXIT_BAD_INPUT", "EXIT_SERVER", "EXIT_DAMAGED",
    "CliError", "exit_code_for", "build_config", "open_store", "open_bound_store", "spool_options", "server_options",
]

EXIT_OK = 0
EXIT_UNDELIVERED = 1  # events remain undelivered, signatures fail, the demo lost events
EXIT_BAD_INPUT = 2  # usage errors, missing/unreadable paths, bad configuration or key
EXIT_SERVER = 3  # the server refused (401/403/4xx/5xx) or could not be reached
EXIT_DAMAGED = 4  # a damaged file (not JSON/TOON, not a trace file, unreadable store data)

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 events remain undelivered, signatures fail or the demo lost events; "
    "2 usage error or bad input (missing path, bad option, missing key); "
    "3 the server refused or is unreachable; 4 a damaged file."
)


class CliError(click.ClickException):
    """A failure of one command: one message line and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self._exit_code = exit_code

    # click declares ``exit_code`` a class variable but reads it per instance: a property carries ours.
    @property
    def exit_code(self) -> int:
        return self._exit_code

    @exit_code.setter
    def exit_code(self, code: int) -> None:
        self._exit_code = code


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of a library error reaching the command line."""
    if isinstance(error, TransportError):
        return EXIT_SERVER
    if isinstance(error, ToonParseError):
        return EXIT_DAMAGED
    if isinstance(error, SignatureError):
        return EXIT_UNDELIVERED
    if isinstance(error, (ConfigError, ValidationError, StoreError)):
        return EXIT_BAD_INPUT
    if isinstance(error, AOPError):
        return EXIT_BAD_INPUT
    return EXIT_BAD_INPUT


def build_config(spool: Optional[str] = None, base_url: Optional[str] = None,
                 api_key: Optional[str] = None, key: Optional[str] = None, **extra: Any) -> "ClientConfig":
    """ClientConfig.from_env() with the command's options (those given) overriding AOP_* variables."""
    from ..config import ClientConfig

    overrides: dict[str, object] = {name: value for name, value in (
        ("spool_dir", spool), ("base_url", base_url), ("api_key", api_key), ("org_salt_key", key),
    ) if value is not None}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return ClientConfig.from_env(None, **overrides)


def check_spool_dir(path: Path) -> Path:
    """Refuse a spool path that does not exist, is not a readable directory or holds no store (never create one)."""
    if not path.exists():
        raise CliError(f"spool directory {str(path)!r} does not exist (nothing was ever stored there)")
    if not path.is_dir():
        raise CliError(f"spool path {str(path)!r} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise CliError(f"spool directory {str(path)!r} is not readable")
    if not (path / "index.sqlite3").exists() and not (path / "segments").is_dir():
        raise CliError(f"{str(path)!r} is not an aop spool (no index.sqlite3 and no segments/ inside)")
    return path


def open_store(config: Any, *, inspect: bool = False) -> Any:
    """Open the DiskStore of ``config.spool_path`` after checking that it exists.

    With ``inspect`` (``aop status``), root looking at a spool another uid owns
    gets the read-only view (aop_client.store.readonly): nothing in it is
    created or written, so the worker keeps a spool it can use.
    """
    from ..store import DiskStore

    path = check_spool_dir(Path(config.spool_path))
    try:
        if inspect and os.geteuid() == 0 and path.stat().st_uid != 0:
            from ..store.readonly import ReadOnlyStore

            return ReadOnlyStore(path)
        return DiskStore(path)
    except StoreError as e:
        raise CliError(f"cannot open spool {str(path)!r}: {e}", EXIT_BAD_INPUT) from e


def open_bound_store(config: Any) -> Any:
    """open_store, for a command that sends: refused (ConfigError) when the spool belongs to other credentials."""
    from ..spool_identity import open_bound

    return open_bound(config, lambda: open_store(config))


def spool_options(func: Any) -> Any:
    """The options that locate a spool: --spool, --base-url, --api-key (defaults from AOP_*)."""
    func = click.option("--api-key", default=None, help="API key (default $AOP_API_KEY); picks the default spool")(func)
    func = click.option("--base-url", default=None, help="server URL (default $AOP_BASE_URL); picks the default spool")(func)
    func = click.option("--spool", default=None, metavar="DIR", help="spool directory (default $AOP_SPOOL_DIR or the per-server default)")(func)
    return func


def server_options(func: Any) -> Any:
    """--key: the org salt key used for signing (default $AOP_ORG_SALT_KEY)."""
    return click.option("--key", default=None, help="org salt key (default $AOP_ORG_SALT_KEY)")(func)
