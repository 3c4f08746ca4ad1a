"""``aop replay``, ``aop export`` and ``aop verify``: trace files in and out of the spool and the server."""

from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import click
import orjson

from ..core.backoff import RetryPolicy
from ..core.batching import build_batch_body
from ..core.flush_machine import BatchAttempt, next_step
from ..core.outcome import Delivered, Retry, classify
from ..errors import SignatureError, ToonParseError, ValidationError
from ..protocol import check_envelope
from ..transport import HttpTransport
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


def _batches(events: Sequence[dict], max_events: int, max_bytes: int) -> Iterator[list[tuple[str, bytes]]]:
    """``(event_id, body)`` lists within the batch bounds (the events' envelopes were checked)."""
    batch: list[tuple[str, bytes]] = []
    size = 0
    for event in events:
        body = orjson.dumps(event)
        if batch and (len(batch) >= max_events or size + len(body) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append((event["event_id"], body))
        size += len(body) + 1
    if batch:
        yield batch


@dataclass
class _Totals:
    """What a replay did, as ``--json`` prints it."""

    files: int
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)  # dead letters: {"event_id", "reason"}

    def as_dict(self) -> dict:
        return {"files": self.files, "events": self.events, "accepted": self.accepted,
                "duplicates": self.duplicates, "rejected": self.rejected}


def _sendable(events: Sequence[dict], totals: _Totals) -> list[dict]:
    """The events whose envelope the protocol accepts; the others are reported rejected, never sent."""
    good = []
    for event in events:
        try:
            check_envelope(event, check_sig=False)  # the signature is the server's to judge
        except ValidationError as e:
            event_id = event.get("event_id")
            totals.rejected.append({"event_id": event_id if isinstance(event_id, str) else None,
                                    "reason": f"not sent: {e}"})
        else:
            good.append(event)
    return good


def _deliver(transport: HttpTransport, batch: list[tuple[str, bytes]], policy: RetryPolicy, rng: random.Random,
             totals: _Totals) -> None:
    """Deliver one batch as the flusher does: ``classify`` judges each answer, ``next_step`` says what follows.

    Retryable answers (timeouts, 408/425/429/5xx) are retried with the policy's
    backoff (Retry-After as a floor), 400/413 split the batch, refused events are
    dead letters in ``totals.rejected``. A pause (401/403, 1xx/3xx) or a batch that
    used up its retries raises CliError (exit 3): waiting longer is the flusher's job.
    """
    ids = tuple(event_id for event_id, _ in batch)
    queue: list[tuple[BatchAttempt, list[bytes]]] = [(BatchAttempt(str(uuid.uuid4()), ids), [b for _, b in batch])]
    while queue:
        attempt, part = queue.pop(0)
        body = build_batch_body(attempt.batch_id, part)
        while True:
            response = transport.post_batch(attempt.batch_id, body, now=time.time())
            outcome = classify(response.status, response.headers, response.body, batch_event_ids=attempt.event_ids,
                               now=time.time(), error=response.error, truncated=response.truncated)
            step = next_step(attempt, outcome, policy, rng.random())
            if isinstance(outcome, Delivered):
                totals.accepted += len(step.ack) - outcome.duplicates
                totals.duplicates += outcome.duplicates
            totals.rejected.extend({"event_id": event_id, "reason": reason} for event_id, reason in step.dead)
            if step.halves:
                cut = len(step.halves[0])
                queue[:0] = [(BatchAttempt(str(uuid.uuid4()), step.halves[0]), part[:cut]),
                             (BatchAttempt(str(uuid.uuid4()), step.halves[1]), part[cut:])]
            if step.paused:
                raise CliError(f"server {transport.base_url} refused the batch: {step.reason}", EXIT_SERVER)
            if step.fallback:
                tries = attempt.failures + 1
                if isinstance(outcome, Retry) and outcome.status is None:
                    raise CliError(f"cannot reach {transport.base_url} ({tries} attempts): {step.reason}", EXIT_SERVER)
                raise CliError(f"server {transport.base_url} did not take a batch of {len(part)} events "
                               f"({tries} attempts): {step.reason}", EXIT_SERVER)
            if step.retry is None:
                break
            attempt = step.retry
            time.sleep(step.delay)  # the backoff itself, bounded by --max-wait


@click.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--to", "to_url", default=None, metavar="URL", help="server URL (default $AOP_BASE_URL)")
@click.option("--api-key", default=None, help="API key (default $AOP_API_KEY)")
@server_options
@click.option("--max-retries", type=click.IntRange(min=1), default=None, metavar="N",
              help="failed attempts per batch before giving up (default $AOP_MAX_RETRIES, 3)")
@click.option("--max-wait", type=click.FloatRange(min=0.0), default=10.0, show_default=True, metavar="SECONDS",
              help="longest wait between two attempts (Retry-After included)")
@click.option("--json", "as_json", is_flag=True, help="print the totals as JSON")
def replay(files: tuple[str, ...], to_url: Optional[str], api_key: Optional[str], key: Optional[str],
           max_retries: Optional[int], max_wait: float, as_json: bool) -> None:
    """Send the events of replay or fallback files again (the server dedupes them by event_id).

    Answers are judged as the flusher judges them (protocol section 2): 429/5xx and
    timeouts are retried with backoff, 400/413 split the batch, refused events are
    reported (exit 1); refused credentials or a batch out of retries stop (exit 3).
    """
    config = build_config(base_url=to_url, api_key=api_key, key=key)
    loaded = [(path, load_events(path)) for path in files]  # every file checked before anything is sent
    cap = min(config.retry_backoff_max, max_wait)
    policy = RetryPolicy(max_retries=config.max_retries if max_retries is None else max_retries,
                         base=min(config.retry_backoff_base, cap), cap=cap)
    transport = HttpTransport(config.base_url, config.api_key, config.org_salt_key, verify_ssl=config.verify_ssl,
                              connect_timeout=config.connect_timeout, read_timeout=config.read_timeout,
                              gzip_threshold=config.gzip_threshold)
    totals = _Totals(files=len(files))
    rng = random.Random()
    try:
        for _path, events in loaded:
            totals.events += len(events)
            for batch in _batches(_sendable(events, totals), config.batch_size, config.max_batch_bytes):
                _deliver(transport, batch, policy, rng, totals)
    finally:
        transport.close()
    if as_json:
        click.echo(orjson.dumps(totals.as_dict()).decode())
    else:
        click.echo(f"replayed {totals.events} events from {len(files)} files: {totals.accepted} accepted, "
                   f"{totals.duplicates} duplicates, {len(totals.rejected)} rejected")
    if totals.rejected:
        first = totals.rejected[0]
        raise CliError(f"{len(totals.rejected)} events rejected (first: {first.get('event_id')}: "
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
