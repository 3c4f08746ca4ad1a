"""Real-time streaming (protocol-v1 section 4): ``StreamingClient`` and ``HybridClient``.

The package owns the client side of the stream. Modules, and the one way
their imports point (each imports only those above it):

* :mod:`.frames`, :mod:`.ws_codec`: the pure framing and timing rules (sans-I/O);
* :mod:`.outbox`: the bounded send buffer producers offer to;
* :mod:`.port`: the ``StreamSender`` port and what a sender is given
  (validated ``StreamSettings``, a ``Session`` per connect, its ``LinkState``);
* :mod:`.ws_sender`, :mod:`.http_sender`: the two senders, each owning its
  connection, loop and state;
* :mod:`.client`: ``StreamingClient``, the life cycle (one I/O thread, the
  outbox, the callbacks) composed with the sender ``open_sender`` builds;
* :mod:`.hybrid`: ``HybridClient``, store first and stream second, typed
  against the ``BaseClient`` port (what it needs of an AOPClient).

Importing the package never needs the ``streaming`` extra; asking for
WebSocket mode without it raises
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
