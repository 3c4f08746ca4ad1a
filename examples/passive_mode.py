"""Passive (push) mode: the agent emits events as it reasons; a flusher delivers them.

Run a collector first (`aop serve`), then: `python examples/passive_mode.py`.
Settings come from AOP_* variables (AOP_BASE_URL, AOP_API_KEY, AOP_ORG_SALT_KEY...).
"""

from aop_client import AOPClient, ClientConfig


def main() -> dict:
    config = ClientConfig.from_env(agent_id=123)
    client = AOPClient(config)
    builder = client.trace_builder
    client.start()

    client.emit_event(builder.create_reasoning(
        goal="Process customer refund request",
        steps=[{"step_id": "s1", "description": "Validate order ID",
                "decision": "proceed", "confidence": 0.95}],
        safety_checks=[{"name": "policy_check", "result": "passed"}],
        uncertainty="low",
    ))
    client.emit_event(builder.create_action_request(
        action="create_ticket", params={"order_id": "ORD-123", "reason": "defect"}))
    client.emit_event(builder.create_action_response(
        status="ok", data={"ticket_id": "T-999"}, meta={"latency_ms": 87}))
    client.emit_event(builder.create_final_output(
        text="Ticket T-999 created successfully", structured={"ticket_id": "T-999"}))

    client.finalize()          # deliver the run and tell the server it is complete
    stats = client.get_stats()
    client.stop()
    print(f"run {builder.run_id}: {stats['delivered']} delivered, {stats['pending']} pending")
    return stats


if __name__ == "__main__":
    main()
