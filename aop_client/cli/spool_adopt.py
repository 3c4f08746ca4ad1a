"""``aop spool adopt``: rebind a spool directory to new credentials (key or salt rotation).

A spool is bound to the destination (base_url, api_key, org_salt_key) its events
were stored under (:mod:`aop_client.spool_identity`); clients with other
credentials are refused. This command is the explicit, deliberate way to move a
spool to new credentials. It holds the spool's flusher lock for its duration and refuses
while another process is its flusher or still writes to one of its segments
(those would keep sending or storing under the old credentials; ``--force``
does not override this), and while sampled events are not signed with the new
salt (a server checking the new salt would refuse them), unless ``--force``.
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
              help="adopt even though sampled events are signed with another salt (never while another "
                   "process is its flusher or writes to it)")
def adopt_cmd(spool: Optional[str], base_url: Optional[str], api_key: Optional[str], key: Optional[str],
              force: bool) -> None:
    """Bind the spool DIR to these credentials (--base-url/--api-key/--key or AOP_*), e.g. after a key rotation."""
    from ..spool_identity import adopt

    config = build_config(spool, base_url, api_key, key)
    if not config.spool_dir:
        raise CliError("aop spool adopt needs the spool to adopt: --spool DIR (or AOP_SPOOL_DIR)")
    store = open_store(config)
    try:
        result = adopt(store, config, force=force)  # holds the flusher lock; refuses while others send or write
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
