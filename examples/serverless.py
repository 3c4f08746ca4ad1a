"""Serverless: a short-lived process emits and exits; its events are delivered later.

Each invocation (a Lambda, a cron job, a CLI run) appends its events to the
on-disk store and returns at once, without waiting for the network. Whatever is
not delivered before the process exits stays in the store and is sent by the
next process that starts a client on the same spool directory, or by
`aop flush`. Use a spool directory that outlives the invocation (for example a
mounted volume) and a short batch_interval.

    python examples/serverless.py emit     # one invocation: emit and exit, no waiting
    python examples/serverless.py drain    # later: deliver everything pending, exit 0 when done
"""

import sys

from aop_client import AOPClient, ClientConfig


def handler(event_text: str) -> str:
    """One invocation: record the agent's work durably and return immediately."""
    client = AOPClient(ClientConfig.from_env(agent_id=42))
    builder = client.trace_builder
    client.emit_event(builder.create_reasoning(
        goal=f"Answer: {event_text}", steps=[], safety_checks=[], uncertainty="medium"))
    client.emit_event(builder.create_final_output(text=f"Handled {event_text}"))
    return builder.run_id          # no start(), no network: the events are on disk


def drain(timeout: float = 30.0) -> bool:
    """A later process (or `aop flush`): become the flusher and deliver the backlog."""
    client = AOPClient(ClientConfig.from_env(batch_interval=0.05))
    client.start()
    ok = client.flush(timeout=timeout)
    client.stop()
    return ok


if __name__ == "__main__":
    if sys.argv[1:] == ["drain"]:
        sys.exit(0 if drain() else 1)
    print(handler(" ".join(sys.argv[2:]) or "hello"))
