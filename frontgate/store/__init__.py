"""Shared state for limits: an in-process store, or Redis (single server, Sentinel or Cluster).

`shared_store(build)` gives every plugin of one config generation the same store: one Redis connection per
worker and generation, or the worker's single in-process store (which outlives reloads, so a reload resets
no counter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from frontgate.store.base import DecisionPlan, LimitStore, RateRule, StoreUnavailable, Verdict
from frontgate.store.memory import MemoryStore, process_memory_store

if TYPE_CHECKING:
    from frontgate.plugins.base import BuildContext

SHARED_KEY = "frontgate.store"

__all__ = [
    "DecisionPlan", "LimitStore", "MemoryStore", "RateRule", "StoreUnavailable", "Verdict", "open_store",
    "shared_store",
]


def open_store(url: str | None, timeout: float) -> LimitStore:
    """A store for `store.redis` (None: the in-process one). Not started: call `start()`."""
    if url is None:
        return process_memory_store()
    scheme = url.split("://", 1)[0].lower()
    if scheme.endswith("+cluster"):
        from frontgate.store.redis_cluster import ClusterStore

        return ClusterStore(url, timeout)
    from frontgate.store.redis_store import RedisStore

    return RedisStore(url, timeout)


def shared_store(build: BuildContext) -> LimitStore:
    store: LimitStore | None = build.shared.get(SHARED_KEY)
    if store is None:
        settings = build.gateway.store
        store = open_store(settings.redis if settings else None, settings.timeout if settings else 0.02)
        build.shared[SHARED_KEY] = store
    return store
