"""The reference collector's stream routes store what one read brings in as one batch: one commit, not one per event."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from aop_client.collector import CollectorConfig, start_collector

from collector_helpers import make_run

KEY, SALT = "stream-batch-key", "stream-batch-salt"


def _count_stream_commits(collector: Any) -> list[list[str]]:
    """Wrap the collector's insert_batch; returns the list that receives the event_ids of every stream commit."""
    commits: list[list[str]] = []
    real = collector.storage.insert_batch

    def counting(batch_id: str, events: Any, **kwargs: Any) -> list[bool]:
        if batch_id == "stream":
            commits.append([e.event_id for e in events])
        return real(batch_id, events, **kwargs)

    collector.storage.insert_batch = counting
    return commits


async def _ws_burst(url: str, events: list[dict]) -> list[str]:
    """Send every event as a text frame without waiting, then read one answer per event; the acked ids in order."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {KEY}"}) as ws:
            for event in events:
                await ws.send_str(orjson.dumps(event).decode())
            acked = []
            while len(acked) < len(events):
                msg = await ws.receive(timeout=30)
                acked.append(orjson.loads(msg.data)["ack"])
            return acked


def test_ws_burst_is_stored_with_far_fewer_commits_than_events() -> None:
    """A 1,000-frame WebSocket burst is acked in full and stored in arrival order with at most 100 commits."""
    with start_collector(CollectorConfig(api_key=KEY, org_salt_key=SALT, port=0)) as collector:
        commits = _count_stream_commits(collector)
        run_id, events = make_run(1000, SALT)
        ws_url = collector.url.replace("http://", "ws://", 1) + "/ws/trace/" + run_id
        acked = asyncio.run(_ws_burst(ws_url, events))
        sent = [e["event_id"] for e in events]
        assert acked == sent
        assert [event_id for commit in commits for event_id in commit] == sent
        assert len(commits) <= len(events) // 10, f"{len(commits)} commits for {len(events)} events"
        assert collector.stats()["events"] == len(events)
