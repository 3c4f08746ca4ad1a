"""The ``aop`` command's entry point; the commands themselves are in :mod:`.app` (click + rich).

click and rich are the ``cli`` extra, not the base install: the ``aop``
console script is always installed, and without them it prints one line,
``aop: the command line needs extra packages (click, rich): pip install
'aop-client[cli]'``, and exits 2 (no traceback). This module imports neither
package, so ``python -m aop_client.collector`` (argparse) and the library
work without them. Exit codes, errors and commands: see :mod:`.app`.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, Optional, Sequence

from ..extras import EXTRAS, install_hint

__all__ = ["main", "cli", "CliError", "missing_cli_packages"]

_EXIT_MISSING_EXTRA = 2  # the usage-error code (EXIT_BAD_INPUT of ._common, which needs click)


def missing_cli_packages() -> list[str]:
    """The packages of the ``cli`` extra that cannot be imported here (empty when the extra is installed)."""
    return [name for name in EXTRAS["cli"] if importlib.util.find_spec(name) is None]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``aop`` console script; returns (and, called without ``argv``, exits with) the code."""
    missing = missing_cli_packages()
    if missing:
        print(f"aop: the command line needs extra packages ({', '.join(missing)}): {install_hint('cli')}",
              file=sys.stderr)
        code = _EXIT_MISSING_EXTRA
    else:
        from .app import run

        code = run(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        sys.exit(code)
    return code


def __getattr__(name: str) -> Any:  # ``from aop_client.cli import cli, CliError`` (needs the cli extra)
    if name == "cli":
        from .app import cli

        return cli
    if name == "CliError":
        from ._common import CliError

        return CliError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
