"""One log line when the state store starts failing, one when it answers again.

Every failed call is counted (``txgate_state_errors_total``); logging each would print a line
per request during an outage. The transitions are what an operator needs: when it broke, why,
when it came back and how many calls failed meanwhile.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("txgate.state")


class Health:
    def __init__(self, store: str):
        self._store = store
        self._down_since: float | None = None
        self._failed = 0

    def failed(self, operation: str, kind: str) -> None:
        self._failed += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("state store unavailable: %s failed (%s)", operation, kind, extra={
                "event": "state_store_down", "store": self._store, "operation": operation,
                "error": kind})

    def answered(self) -> None:
        if self._down_since is None:
            return
        down_s = round(time.monotonic() - self._down_since, 3)
        log.warning("state store answers again after %.1f s (%d failed calls)", down_s,
                    self._failed, extra={"event": "state_store_up", "store": self._store,
                                         "down_s": down_s, "failed_calls": self._failed})
        self._down_since, self._failed = None, 0
