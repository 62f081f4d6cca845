"""Reload on file change: one polling watcher for the rules directory and the rates file.

Polling (a stat per interval) rather than inotify: it works on every filesystem, including
the bind mounts and ConfigMap symlink swaps of container deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable


class FileWatch:
    """Calls ``reload()`` when ``fingerprint()`` changes and then stays unchanged for half an
    interval (an editor's burst of writes is one change)."""

    def __init__(self, fingerprint: Callable[[], tuple], reload: Callable[[], None]):
        self._fingerprint = fingerprint
        self._reload = reload
        self._task: asyncio.Task | None = None

    def start(self, interval_s: float = 1.0) -> None:
        async def loop():
            seen = self._fingerprint()
            while True:
                await asyncio.sleep(interval_s)
                now = self._fingerprint()
                if now == seen:
                    continue
                await asyncio.sleep(interval_s / 2)
                if self._fingerprint() == now:
                    seen = now
                    self._reload()
        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
