"""``aop demo``: a thin click wrapper around :func:`aop_client.demo.run_demo` with rich progress and table."""

from __future__ import annotations

from typing import Any, Optional

import click
import orjson

from ._common import EXIT_UNDELIVERED, CliError

__all__ = ["demo", "summary_table"]


def summary_table(summary: Any) -> Any:
    """The rich Table of a demo Summary."""
    from rich.table import Table

    table = Table(title="aop demo: SIGKILL of the flusher, every event accounted for")
    table.add_column("metric")
    table.add_column("value", justify="right")
    takeover = "-" if summary.takeover_s is None else f"{summary.takeover_s * 1000:.0f} ms"
    rows = [
        ("agent processes", summary.workers),
        ("emitted (stored by emit_event)", summary.emitted),
        ("delivered (held by the collector)", summary.delivered),
        ("duplicates absorbed (server dedupe)", summary.duplicates_absorbed),
        ("lost", summary.lost),
        ("throughput", f"{summary.throughput:,.0f} events/s"),
        ("flusher killed (SIGKILL)", f"pid {summary.killed_pid}" if summary.killed_pid else "no"),
        ("takeover time", takeover),
        ("elapsed", f"{summary.elapsed_s:.2f} s"),
    ]
    for name, value in rows:
        style = "bold red" if name == "lost" and value else ("bold green" if name == "lost" else None)
        table.add_row(name, str(value), style=style)
    return table


@click.command()
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="agent processes")
@click.option("--events", type=click.IntRange(1, 1_000_000), default=250, show_default=True,
              help="events emitted by each agent")
@click.option("--seed", type=int, default=None, help="seed of the agents' random choices")
@click.option("--timeout", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              help="give up (and count what is missing as lost) after this many seconds")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
@click.option("--quiet", is_flag=True, help="no progress and no table (the exit code still tells)")
def demo(workers: int, events: int, seed: Optional[int], timeout: float, as_json: bool, quiet: bool) -> None:
    """Run agents in several processes against a local collector, SIGKILL the flusher, show that nothing is lost."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .. import collector  # noqa: F401 - without the collector extra: one line, before any progress bar
    from ..demo import run_demo

    show = not quiet and not as_json
    console = Console(stderr=True)
    if show:
        columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[phase]}"), TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            emitted = bar.add_task("emitted", total=workers * events, phase="")
            delivered = bar.add_task("delivered", total=workers * events, phase="")

            def on_progress(p: Any) -> None:
                bar.update(emitted, completed=p.emitted, phase="")
                bar.update(delivered, completed=p.delivered, phase=p.phase)

            summary = run_demo(workers, events, seed=seed, timeout=timeout, on_progress=on_progress)
    else:
        summary = run_demo(workers, events, seed=seed, timeout=timeout)
    if as_json:
        click.echo(orjson.dumps(summary.to_dict()).decode())
    elif not quiet:
        Console().print(summary_table(summary))
    if not summary.ok:
        raise CliError(f"{summary.lost} of {summary.emitted} emitted events were not delivered", EXIT_UNDELIVERED)
