"""``aop status``, ``aop flush`` and ``aop dead-letters``: inspect and drain the host's spool."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Optional

import click
import orjson

from ..errors import StoreError

from ._common import (
    EXIT_SERVER,
    EXIT_UNDELIVERED,
    CliError,
    build_config,
    open_bound_store,
    open_store,
    server_options,
    spool_options,
)

__all__ = ["status", "flush", "dead_letters", "status_report"]


def _damage_text(damage: dict) -> str:
    if damage.get("error"):
        return f"damaged index, not repaired yet: {damage['error']}"
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(damage["rebuilt_at"]))
    return (f"damaged: index rebuilt at {at}, {damage['events_recovered']} events recovered "
            f"({damage['rebuilds']} rebuild(s); the damaged copy is in quarantine/)")


def status_report(store: Any, holder: Optional[dict]) -> dict:
    """The status document of one store (pure apart from reading the store's stats and last error).

    A damaged index is repaired by the read itself (the store rebuilds it);
    damage that cannot be repaired now is reported, with null counts, not raised.
    """
    from ..delivery_report import read_last_error
    from ..store.boundary import damage_of

    flusher = holder if holder and holder.get("alive") else None
    try:
        st = store.stats()  # meets (and repairs) damage, so index_damage() below tells of it
        damage = store.index_damage() if hasattr(store, "index_damage") else None
    except StoreError as e:
        if damage_of(e) is None:
            raise
        return {"spool": str(store.directory), "flusher": flusher,
                "last_error": read_last_error(str(store.directory)),
                "read_only": bool(getattr(store, "read_only", False)),
                "index_damage": {"rebuilds": None, "rebuilt_at": None, "events_recovered": None, "error": str(e)}}
    return {
        "spool": str(store.directory),
        "pending": st.pending,
        "in_flight": st.in_flight,
        "dead_letters": st.dead_letters,
        "fallback": st.fallback,
        "retained": st.delivered_retained,
        "quarantined": st.quarantined,
        "foreign_files": st.foreign_files,
        "dropped": dict(st.dropped),
        "bytes_on_disk": st.bytes_on_disk,
        "oldest_pending_age_s": st.oldest_pending_age,
        "flusher": flusher,
        "last_error": read_last_error(str(store.directory)),
        "read_only": bool(getattr(store, "read_only", False)),  # root's inspection of another user's spool
        "index_damage": damage,
    }


def _holder(spool: Any) -> Optional[dict]:
    from ..election import FlusherElection

    return FlusherElection(spool).holder()


def _last_error_text(error: Optional[dict]) -> str:
    """One line: the last delivery error, its kind, since when and how often (or that it recovered)."""
    from ..core.failure_report import clock_text

    if not error or not error.get("kind"):
        return "none"
    try:
        since = f"since {clock_text(float(error['first_seen']))}, {int(error['count'])} time(s), " \
                f"last {clock_text(float(error['last_seen']))}"
        recovered = error.get("recovered_at")
        if recovered is not None:
            since += f"; recovered at {clock_text(float(recovered))}"
    except (KeyError, TypeError, ValueError):
        since = "unreadable times"
    return f"{error.get('kind')}: {error.get('message')} ({since})"


def _flusher_text(holder: Optional[dict]) -> str:
    if not holder:
        return "none"
    since = holder.get("since")
    age = f", for {time.time() - since:.1f} s" if since else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{age}"


@click.command()
@spool_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table")
def status(spool: Optional[str], base_url: Optional[str], api_key: Optional[str], as_json: bool) -> None:
    """Show pending, in-flight, dead-letter, fallback and retained events and the current flusher."""
    config = build_config(spool, base_url, api_key)
    store = open_store(config, inspect=True)
    try:
        report = status_report(store, _holder(config.spool_path))
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table

    view = " (read-only inspection)" if report["read_only"] else ""
    table = Table(title=f"aop spool {report['spool']}{view}", show_header=False)
    damage = report["index_damage"]
    if "pending" not in report:
        table.add_row("index", _damage_text(damage))
        table.add_row("current flusher", _flusher_text(report["flusher"]))
        table.add_row("last error", _last_error_text(report["last_error"]))
        Console().print(table)
        return
    age = report["oldest_pending_age_s"]
    rows = [
        ("pending", report["pending"]), ("in flight", report["in_flight"]),
        ("dead letters", report["dead_letters"]), ("fallback", report["fallback"]),
        ("retained (delivered)", report["retained"]), ("quarantined", report["quarantined"]),
        ("foreign files (ignored)", report["foreign_files"]),
        ("dropped", _dropped_text(report["dropped"])), ("bytes on disk", report["bytes_on_disk"]),
        ("oldest pending", "-" if age is None else f"{age:.1f} s"),
        ("current flusher", _flusher_text(report["flusher"])),
        ("last error", _last_error_text(report["last_error"])),
    ]
    if damage is not None:
        rows.append(("index", _damage_text(damage)))
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)


def _dropped_text(dropped: dict) -> str:
    """``0``, or the total and each reason: ``53 (disk_full 50, full 3)``."""
    total = sum(dropped.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items())) + ")"


def _undelivered(store: Any) -> int:
    st = store.stats()
    return st.pending + st.in_flight + st.fallback


@click.command()
@spool_options
@server_options
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds to keep trying before giving up")
@click.option("--quiet", is_flag=True, help="no progress bar")
def flush(spool: Optional[str], base_url: Optional[str], api_key: Optional[str], key: Optional[str],
          timeout: float, quiet: bool) -> None:
    """Deliver every stored event now (fallback included); exit 1 when some remain or were refused (3: server unreachable/refusing)."""
    from ..client import AOPClient

    config = build_config(spool, base_url, api_key, key)
    store = open_bound_store(config)
    try:
        total = _undelivered(store)
        dead_before = store.stats().dead_letters
        holder = _holder(config.spool_path)
    finally:
        store.close()
    if holder and holder.get("alive") and not quiet:
        click.echo(f"another process ({_flusher_text(holder)}) is the flusher; waiting for its drain", err=True)
    client = AOPClient(config)
    done = threading.Event()
    result: dict[str, Any] = {}

    def drain() -> None:
        try:
            result["drained"] = client.flush(timeout=timeout)
        except Exception as e:  # reported below as one line
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=drain, name="aop-cli-flush", daemon=True).start()
    _progress(client, total, done, quiet)
    stats = client.get_stats()
    client.stop(timeout=1.0 if result.get("drained") else 0.3)  # drained or given up: a short stop releases leases
    left = _undelivered(client.store)
    new_dead = client.store.stats().dead_letters - dead_before
    client.store.close()
    if "error" in result:
        raise result["error"]
    delivered = stats.get("delivered", 0)
    if left:
        error = stats.get("last_error")
        code = EXIT_SERVER if error and not delivered else EXIT_UNDELIVERED
        why = f"last error: {error}" if error else ""
        other = _holder(config.spool_path) if not stats.get("is_flusher") else None
        if not why and other and other.get("alive") and other.get("pid") != os.getpid():
            why = f"another process ({_flusher_text(other)}) is the flusher and has not drained them"
        raise CliError(f"{left} events remain undelivered after {timeout:g} s" + (f" ({why})" if why else ""), code)
    click.echo(f"flushed: {delivered} delivered, {stats.get('duplicates', 0)} duplicates, "
               f"{max(0, new_dead)} new dead letters, 0 remaining")
    if new_dead > 0:
        raise CliError(f"the server refused {new_dead} events for good; see `aop dead-letters list`",
                       EXIT_UNDELIVERED)


def _progress(client: Any, total: int, done: threading.Event, quiet: bool) -> None:
    """Show a progress bar of delivered events until ``done`` is set."""
    if quiet or not total:
        done.wait()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("flushing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_stderr_console(), transient=False) as bar:
        task = bar.add_task("flush", total=total)
        while not done.wait(0.1):
            bar.update(task, completed=max(0, total - _undelivered(client.store)))
        bar.update(task, completed=max(0, total - _undelivered(client.store)))


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@click.group(name="dead-letters")
def dead_letters() -> None:
    """List, retry or purge the events the server refused for good."""


@dead_letters.command(name="list")
@spool_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object per dead letter, one per line")
def dl_list(spool: Optional[str], base_url: Optional[str], api_key: Optional[str], as_json: bool) -> None:
    """List every dead letter with its reason."""
    store = open_store(build_config(spool, base_url, api_key))
    try:
        letters = store.dead_letters()
    finally:
        store.close()
    for d in letters:
        row = {"event_id": d.event_id, "run_id": d.run_id, "seq": d.seq, "reason": d.reason, "at": d.at}
        if as_json:
            click.echo(orjson.dumps(row).decode())
        else:
            click.echo(f"{d.event_id}  run {d.run_id} seq {d.seq}  {d.reason}")
    if not as_json:
        click.echo(f"{len(letters)} dead letters", err=True)


def _ids(ids: tuple[str, ...]) -> Optional[list[str]]:
    return list(ids) if ids else None


@dead_letters.command(name="retry")
@spool_options
@click.option("--id", "ids", multiple=True, metavar="EVENT_ID", help="retry only these (repeatable); default all")
def dl_retry(spool: Optional[str], base_url: Optional[str], api_key: Optional[str], ids: tuple[str, ...]) -> None:
    """Return dead letters to pending; the next flush (or `aop flush`) sends them again."""
    store = open_store(build_config(spool, base_url, api_key))  # sends nothing: the spool's own flusher will
    try:
        n = store.retry_dead_letters(_ids(ids))
    finally:
        store.close()
    click.echo(f"{n} dead letters returned to pending")
    if ids and n < len(set(ids)):
        raise CliError(f"{len(set(ids)) - n} of the given event ids are not dead letters")


@dead_letters.command(name="purge")
@spool_options
@click.option("--id", "ids", multiple=True, metavar="EVENT_ID", help="purge only these (repeatable); default all")
@click.option("--yes", is_flag=True, help="do it without asking (required when stdin is not a terminal)")
def dl_purge(spool: Optional[str], base_url: Optional[str], api_key: Optional[str], ids: tuple[str, ...],
             yes: bool) -> None:
    """Delete dead letters for good (asks first, unless --yes)."""
    store = open_store(build_config(spool, base_url, api_key))
    try:
        target = len(store.dead_letters()) if not ids else len(set(ids))
        if not yes:
            if not sys.stdin.isatty():
                raise CliError(f"refusing to delete {target} dead letters without --yes")
            click.confirm(f"Delete {target} dead letters for good?", abort=True, err=True)
        n = store.purge_dead_letters(_ids(ids))
    finally:
        store.close()
    click.echo(f"{n} dead letters purged")
