"""The ``aop`` command group: demo, collector, spool inspection and trace-file tools (the ``cli`` extra: click + rich).

:func:`aop_client.cli.main` (the console script) checks that the extra is
installed, then calls :func:`run`.

Commands (one module each): ``demo`` (:mod:`.demo_cmd`), ``serve`` (:mod:`.serve`),
``status``, ``flush``, ``dead-letters list|retry|purge`` (:mod:`.spool`),
``replay``, ``export``, ``verify`` (:mod:`.files`), ``spool adopt`` (:mod:`.spool_adopt`). Settings come from the
``AOP_*`` variables (``ClientConfig.from_env``); options override them.

Errors are one line on stderr, ``aop: error: <what and which value>``, and no
traceback (``aop --debug ...`` shows it); so is a command needing a missing
extra (``aop serve`` without ``collector``: ``pip install 'aop-client[collector]'``).
Nothing stored is deleted unless a command says so (``dead-letters purge``, which asks or needs ``--yes``).

Exit codes:

* 0 - success;
* 1 - events remain undelivered (flush, replay rejections), a signature fails
  (verify), or the demo lost events;
* 2 - usage error or bad input: unknown option, missing or unreadable path,
  bad configuration, no key, a missing extra;
* 3 - the server refused (401/403, other error statuses) or is unreachable;
* 4 - a damaged file (not JSON/TOON, not a trace file);
* 130 - interrupted (Ctrl-C).
"""

from __future__ import annotations

import click

from .._version import __version__
from ..errors import AOPError
from ..extras import extra_providing, install_hint
from ._common import EXIT_BAD_INPUT, EXIT_CODES_HELP, CliError, exit_code_for
from .demo_cmd import demo
from .files import export, replay, verify
from .serve import serve
from .spool import dead_letters, flush, status
from .spool_adopt import spool_group

__all__ = ["run", "cli", "CliError"]


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="aop", message="aop %(version)s")
@click.option("--debug", is_flag=True, help="show tracebacks of errors")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """aop: run the demo, the reference collector, and inspect or drain this host's spool."""
    ctx.obj = {"debug": debug}


for _command in (demo, serve, status, flush, replay, export, verify, dead_letters, spool_group):
    cli.add_command(_command)


def _error(message: str) -> None:
    first = " ".join(str(message).split())
    click.echo(f"aop: error: {first}", err=True)


def run(args: list[str]) -> int:
    """Run the ``aop`` command line ``args``; returns the documented exit code."""
    debug = "--debug" in args[: args.index("--") if "--" in args else len(args)]
    try:
        code = cli.main(args=args, prog_name="aop", standalone_mode=False)
    except click.exceptions.Abort:
        _error("aborted")
        code = 130
    except click.ClickException as e:
        if debug:
            raise
        _error(e.format_message())
        code = e.exit_code if isinstance(e, CliError) else EXIT_BAD_INPUT
    except AOPError as e:
        if debug:
            raise
        _error(str(e))
        code = exit_code_for(e)
    except KeyboardInterrupt:
        _error("interrupted")
        code = 130
    except ImportError as e:  # an optional dependency of this command is not installed
        extra = extra_providing(e.name)
        if debug or extra is None:
            raise
        _error(f"this command needs the '{extra}' extra ({e.name} is not installed): {install_hint(extra)}")
        code = EXIT_BAD_INPUT
    except OSError as e:
        if debug:
            raise
        _error(f"{getattr(e, 'filename', None) or ''} {e.strerror or e}".strip())
        code = EXIT_BAD_INPUT
    return code if isinstance(code, int) else 0
