"""Active (pull) mode: collect the events of a run and hand the whole trace over yourself.

No server is needed: `python examples/active_mode.py` prints the trace as JSON and TOON.
"""

from aop_client import AOPClient, ClientConfig, to_toon


def main() -> list:
    client = AOPClient(ClientConfig.from_env(agent_id=123))
    builder = client.trace_builder

    builder.create_reasoning(goal="Analyze query", steps=[], safety_checks=[], uncertainty="low")
    builder.create_action_request(action="search_database", params={"query": "customer_id:123"})
    builder.create_action_response(status="ok", data={"results": [{"id": 1}, {"id": 2}]})
    builder.create_final_output(text="Analysis complete", structured={"count": 2})

    trace = client.get_trace()                      # list of dicts, seq 1..4
    print(client.get_trace_json(pretty=True))
    print(to_toon(trace))
    return trace


if __name__ == "__main__":
    main()
