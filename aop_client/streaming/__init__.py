"""Real-time streaming (protocol-v1 section 4): ``StreamingClient`` and ``HybridClient``.

The package owns the client side of the stream: the pure framing and timing
rules (:mod:`.frames`), the bounded send buffer (:mod:`.outbox`), the I/O
adapter with its one background thread (:mod:`.client`) and the hybrid
store-then-stream client (:mod:`.hybrid`). Importing it never needs the
``streaming`` extra; asking for WebSocket mode without it raises
:class:`~aop_client.errors.StreamingUnavailableError`.
"""

from .client import StreamingClient
from .frames import Ack, Nack, OutgoingEvent, encode_event, parse_server_frame, reconnect_delay
from .hybrid import HybridClient

__all__ = [
    "StreamingClient",
    "HybridClient",
    "Ack",
    "Nack",
    "OutgoingEvent",
    "encode_event",
    "parse_server_frame",
    "reconnect_delay",
]
