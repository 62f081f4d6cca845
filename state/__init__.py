"""Shared state: one interface (``base``), an in-process and a Redis implementation."""

from __future__ import annotations

from state.base import StateBackend, StateError
from state.memory import MemoryBackend

__all__ = ["MemoryBackend", "StateBackend", "StateError", "create_backend"]


def create_backend(backend: str, url: str | None = None, cluster: bool = False,
                   timeout_ms: int = 100, *, sentinel: tuple[str, list] | None = None,
                   wait_replicas: int = 0) -> StateBackend:
    """The backend named by the configuration (``memory`` or ``redis``); ``sentinel`` is
    (master name, [(host, port), …]) and ``wait_replicas`` as in ``state.redis``."""
    if backend == "memory":
        return MemoryBackend()
    if backend == "redis":
        if not url and sentinel is None:
            raise ValueError("the redis state backend needs a url or sentinel")
        # Imported here so that a memory-only deployment never loads the redis client.
        from state.redis import RedisBackend

        return RedisBackend(url, cluster=cluster, timeout_ms=timeout_ms, sentinel=sentinel,
                            wait_replicas=wait_replicas)
    raise ValueError(f"unknown state backend {backend!r} (expected memory or redis)")
