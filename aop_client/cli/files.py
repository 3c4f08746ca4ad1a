"""``aop replay``, ``aop export`` and ``aop verify``: trace files in and out of the spool and the server."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import click
import orjson

from ..errors import SignatureError, ToonParseError
from ._common import (
    EXIT_DAMAGED,
    EXIT_SERVER,
    EXIT_UNDELIVERED,
    CliError,
    build_config,
    open_store,
    server_options,
    spool_options,
)

__all__ = ["replay", "export", "verify", "load_events"]


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not a trace file") from None
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from e


def load_events(path: str) -> list[dict]:
    """The events of a replay/fallback/export file (JSON trace document, event list, or TOON)."""
    from ..toon_parser import detect_format, parse_toon

    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path}: damaged file (not UTF-8 text)", EXIT_DAMAGED) from None
    try:
        if detect_format(text) == "toon":
            value: Any = parse_toon(text)
        else:
            value = orjson.loads(data)
    except (ToonParseError, orjson.JSONDecodeError) as e:
        raise CliError(f"{path}: damaged file: {e}", EXIT_DAMAGED) from e
    if isinstance(value, dict) and isinstance(value.get("events"), list):
        value = value["events"]
    elif isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise CliError(f"{path}: damaged file: not a trace file (no list of event objects)", EXIT_DAMAGED)
    return value


def _batches(events: Sequence[dict], max_events: int, max_bytes: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for event in events:
        body = orjson.dumps(event)
        if batch and (len(batch) >= max_events or size + len(body) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(body)
        size += len(body) + 1
    if batch:
        yield batch


def _post(transport: Any, bodies: list[bytes]) -> dict:
    """POST one batch (new batch_id); on 413/400 split it in halves as the protocol says.

    Returns the summed 200 answers; a single event still refused with 413/400 is
    counted as rejected. Any other failure raises CliError (exit 3).
    """
    from ..core.batching import build_batch_body

    batch_id = str(uuid.uuid4())
    response = transport.post_batch(batch_id, build_batch_body(batch_id, bodies), now=time.time())
    if response.status is None:
        raise CliError(f"cannot reach {transport.base_url}: {response.error}", EXIT_SERVER)
    if response.status in (400, 413):
        if len(bodies) > 1:
            half = len(bodies) // 2
            first, second = _post(transport, bodies[:half]), _post(transport, bodies[half:])
            return {"accepted": first["accepted"] + second["accepted"],
                    "duplicates": first["duplicates"] + second["duplicates"],
                    "rejected": first["rejected"] + second["rejected"]}
        event_id = _event_id_of(bodies[0])
        why = "too large for the server (413)" if response.status == 413 else "malformed for the server (400)"
        return {"accepted": 0, "duplicates": 0, "rejected": [{"event_id": event_id, "reason": why}]}
    if response.status != 200:
        detail = response.body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
        raise CliError(f"server {transport.base_url} refused the batch: HTTP {response.status} {detail}", EXIT_SERVER)
    try:
        answer = orjson.loads(response.body)
        return {"accepted": int(answer.get("accepted", 0)), "duplicates": int(answer.get("duplicates", 0)),
                "rejected": list(answer.get("rejected") or [])}
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise CliError(f"server {transport.base_url} answered 200 with an unreadable body", EXIT_SERVER) from e


def _event_id_of(body: bytes) -> Optional[str]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value.get("event_id") if isinstance(value, dict) else None


@click.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--to", "to_url", default=None, metavar="URL", help="server URL (default $AOP_BASE_URL)")
@click.option("--api-key", default=None, help="API key (default $AOP_API_KEY)")
@server_options
@click.option("--json", "as_json", is_flag=True, help="print the totals as JSON")
def replay(files: tuple[str, ...], to_url: Optional[str], api_key: Optional[str], key: Optional[str],
           as_json: bool) -> None:
    """Send the events of replay or fallback files again (the server dedupes them by event_id)."""
    from ..transport import HttpTransport

    config = build_config(base_url=to_url, api_key=api_key, key=key)
    loaded = [(path, load_events(path)) for path in files]  # every file checked before anything is sent
    transport = HttpTransport(config.base_url, config.api_key, config.org_salt_key, verify_ssl=config.verify_ssl,
                              connect_timeout=config.connect_timeout, read_timeout=config.read_timeout,
                              gzip_threshold=config.gzip_threshold)
    totals = {"files": len(files), "events": 0, "accepted": 0, "duplicates": 0, "rejected": []}
    try:
        for _path, events in loaded:
            totals["events"] += len(events)
            for bodies in _batches(events, config.batch_size, config.max_batch_bytes):
                answer = _post(transport, bodies)
                totals["accepted"] += answer["accepted"]
                totals["duplicates"] += answer["duplicates"]
                totals["rejected"].extend(answer["rejected"])
    finally:
        transport.close()
    if as_json:
        click.echo(orjson.dumps(totals).decode())
    else:
        click.echo(f"replayed {totals['events']} events from {len(files)} files: {totals['accepted']} accepted, "
                   f"{totals['duplicates']} duplicates, {len(totals['rejected'])} rejected")
    if totals["rejected"]:
        first = totals["rejected"][0]
        raise CliError(f"{len(totals['rejected'])} events rejected (first: {first.get('event_id')}: "
                       f"{first.get('reason')})", EXIT_UNDELIVERED)


def _write_private(path: str, text: str) -> None:
    """Write ``text`` to a new 0600 file (atomic rename; never overwrites)."""
    target = Path(path)
    if target.exists():
        raise CliError(f"{path}: already exists (nothing was overwritten)")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.link(tmp, target)
    except FileExistsError:
        raise CliError(f"{path}: already exists (nothing was overwritten)") from None
    except OSError as e:
        raise CliError(f"{path}: cannot write: {e.strerror}") from e
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


@click.command()
@click.option("--run", "run_id", required=True, metavar="RUN_ID", help="the run to export")
@click.option("--format", "fmt", type=click.Choice(["json", "toon"]), default="json", show_default=True)
@click.option("-o", "--output", default=None, metavar="FILE", help="write to FILE (0600) instead of stdout")
@spool_options
def export(run_id: str, fmt: str, output: Optional[str], spool: Optional[str], base_url: Optional[str],
           api_key: Optional[str]) -> None:
    """Export every stored event of one run (delivered ones included) as a trace document."""
    from ..core.fallback_doc import fallback_document
    from ..toon_parser import to_toon

    store = open_store(build_config(spool, base_url, api_key))
    try:
        stored = [(e.seq, e.body) for e in store.iter_run(run_id, include_delivered=True)]
    finally:
        store.close()
    if not stored:
        raise CliError(f"run {run_id!r} has no events in spool {str(store.directory)!r}")
    doc = orjson.loads(fallback_document(run_id, stored, {"exported_by": "aop export"}, now=time.time()))
    events = doc["events"]
    text = to_toon(doc) + "\n" if fmt == "toon" else orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
    if output:
        _write_private(output, text)
        click.echo(f"exported {len(events)} events of run {run_id} to {output}", err=True)
    else:
        click.echo(text, nl=False)


@click.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@server_options
@click.option("--quiet", is_flag=True, help="print nothing on success")
def verify(files: tuple[str, ...], key: Optional[str], quiet: bool) -> None:
    """Check every event signature in trace files; exit 1 if any fails."""
    from ..signing import verify_event

    config = build_config(key=key)
    if not config.org_salt_key:
        raise CliError("no key to verify with: pass --key or set AOP_ORG_SALT_KEY")
    bad: list[str] = []
    total = 0
    for path in files:
        events = load_events(path)
        total += len(events)
        for position, event in enumerate(events, 1):
            try:
                verify_event(event, config.org_salt_key)
            except SignatureError as e:
                bad.append(f"{path}: event {position} ({event.get('event_id', '?')}): {e.reason}")
        if not quiet and not bad:
            click.echo(f"{path}: {len(events)} events, every signature valid")
    if bad:
        raise CliError(f"{len(bad)} of {total} events fail verification; first: {bad[0]}", EXIT_UNDELIVERED)
