"""The durable, multi-process event store: ``DiskStore`` and the contract types it implements."""

from .api import AppendResult, DeadLetter, Durability, FullPolicy, Store, StoredEvent, StoreStats
from .disk_store import DiskStore

__all__ = [
    "AppendResult",
    "DeadLetter",
    "DiskStore",
    "Durability",
    "FullPolicy",
    "Store",
    "StoreStats",
    "StoredEvent",
]
