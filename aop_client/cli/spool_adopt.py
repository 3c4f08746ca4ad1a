"""``aop spool adopt``: rebind a spool directory to new credentials (key or salt rotation).

A spool is bound to the destination (base_url, api_key, org_salt_key) its events
were stored under (:mod:`aop_client.spool_identity`); clients with other
credentials are refused. This command is the explicit, deliberate way to move a
spool to new credentials. It refuses while a flusher holds the spool (that
process would keep sending under its old credentials), and while sampled
undelivered events are not signed with the new salt (a server checking the new
salt would refuse them), unless ``--force``.
"""

from __future__ import annotations

from typing import Optional

import click

from ._common import CliError, build_config, open_store, server_options, spool_options

__all__ = ["spool_group"]


@click.group(name="spool")
def spool_group() -> None:
    """Manage which credentials a spool directory belongs to."""


@spool_group.command(name="adopt")
@spool_options
@server_options
@click.option("--force", is_flag=True,
              help="adopt even while a flusher holds the spool or its events are signed with another salt")
def adopt_cmd(spool: Optional[str], base_url: Optional[str], api_key: Optional[str], key: Optional[str],
              force: bool) -> None:
    """Bind the spool DIR to these credentials (--base-url/--api-key/--key or AOP_*), e.g. after a key rotation."""
    from ..election import FlusherElection
    from ..spool_identity import adopt

    config = build_config(spool, base_url, api_key, key)
    if not config.spool_dir:
        raise CliError("aop spool adopt needs the spool to adopt: --spool DIR (or AOP_SPOOL_DIR)")
    store = open_store(config)

    def no_flusher() -> None:
        with FlusherElection(store.directory) as election:
            holder = election.holder()
        if holder and holder.get("alive") and not force:
            raise CliError(f"process {holder.get('pid')} on {holder.get('host')} is the flusher of "
                           f"{store.directory!r} and sends under the credentials it was started with: stop "
                           "every process using the old credentials first (or pass --force)")

    try:
        result = adopt(store, config, force=force, before=no_flusher)
        pending = store.stats()
    finally:
        store.close()
    if not result["changed"]:
        click.echo(f"{store.directory} is already bound to these credentials; nothing changed")
        return
    undelivered = pending.pending + pending.in_flight + pending.fallback
    click.echo(f"{store.directory} adopted ({', '.join(result['changed'])} changed); its {undelivered} "
               "undelivered events will be sent with these credentials")
    if result["foreign"]:
        click.echo(f"warning: {result['foreign']} of {result['sampled']} sampled undelivered events are not "
                   "signed with the new org_salt_key (--force)", err=True)
