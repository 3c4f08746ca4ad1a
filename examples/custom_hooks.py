"""PII redaction and pre/post send hooks.

The redaction hook runs before an event touches the disk, so the e-mail address
below is never stored, signed or sent. Run a collector first (`aop serve`).
"""

import re

from aop_client import AOPClient, ClientConfig

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


PII_KEYS = {"email", "phone"}


def _scrub(value):
    """Redact PII keys at any depth, and e-mail addresses inside any string."""
    if isinstance(value, dict):
        return {k: "[REDACTED]" if k in PII_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        return EMAIL.sub("[REDACTED]", value)
    return value


def redact_pii(event: dict) -> dict:
    """Return the event with PII removed from its payload (runs before the disk sees it)."""
    event["payload"] = _scrub(event.get("payload", {}))
    return event


sent = []


def pre_send(event: dict) -> None:
    print(f"Sending event seq={event['seq']}")


def post_send(event: dict, success: bool) -> None:
    sent.append((event["seq"], success))
    print(f"Event seq={event['seq']} {'sent successfully' if success else 'failed to send'}")


def main() -> list:
    config = ClientConfig.from_env(
        agent_id=7, redaction_hook=redact_pii, pre_send_hook=pre_send, post_send_hook=post_send)
    client = AOPClient(config)
    builder = client.trace_builder
    client.start()
    client.emit_event(builder.create_reasoning(
        goal="Refund for jane.doe@example.com", steps=[], safety_checks=[], uncertainty="low"))
    client.emit_event(builder.create_custom(
        "customer_contact", {"email": "jane.doe@example.com", "phone": "+1 555 0100"}))
    client.finalize()
    client.stop()
    return sent


if __name__ == "__main__":
    main()
