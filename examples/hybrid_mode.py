"""Hybrid mode: stream every event over WebSocket for low latency, and batch-upload as the source of truth.

Run a collector first (`aop serve`), then `python examples/hybrid_mode.py`.
An event acknowledged on the stream is marked delivered in the store; any
event the stream missed is delivered by the batch upload in finalize().
Needs the streaming extra: pip install 'aop-client[streaming]'.
"""

from aop_client import AOPClient, ClientConfig
from aop_client.streaming import HybridClient


def main() -> dict:
    config = ClientConfig.from_env(agent_id=123, enable_streaming=True)
    base_client = AOPClient(config)
    hybrid = HybridClient(base_client, streaming_url=config.effective_streaming_url,
                          streaming_mode="websocket")
    with hybrid:
        builder = base_client.trace_builder
        hybrid.emit_event(builder.create_reasoning(
            goal="Plan a trip", steps=[{"step_id": "s1", "description": "Pick dates",
                                        "confidence": 0.8}],
            safety_checks=[], uncertainty="medium"))
        hybrid.emit_event(builder.create_action_request(action="search_flights",
                                                        params={"from": "CDG", "to": "SFO"}))
        hybrid.emit_event(builder.create_final_output(text="Booked", structured={"pnr": "X1"}))
        hybrid.finalize()
    stats = base_client.get_stats()
    print(f"run {builder.run_id}: {stats['delivered']} delivered by batch, "
          f"{stats['pending']} pending")
    return stats


if __name__ == "__main__":
    main()
