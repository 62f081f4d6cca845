"""The loaded rule set and its hot reload (``reload: watch | signal | off`` and the admin API).

Reload parses, compiles and validates everything first and swaps one reference afterwards, so
a broken rule file never replaces working rules and no request sees half a rule set: each
request holds the set it started with (``book.use()``) until it ends, and a retired set is
closed only once the last such request is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from gateway.watch import FileWatch
from rules import RuleLoadError, RuleSet, load_rules

from metrics.definitions import CHALLENGER_RELOADS, RULES_INFO, RULES_RELOADS

log = logging.getLogger("txgate.rules")


class _Active:
    __slots__ = ("rules", "users", "retired")

    def __init__(self, rules: RuleSet):
        self.rules, self.users, self.retired = rules, 0, False

    def release(self) -> None:
        if self.retired and self.users == 0:
            self.rules.close()


class RuleBook:
    """The champion rule set (``rules.path``), or with ``challenger`` the challenger set
    (``rules.challenger``): decided with on every request, never enforced. The two reload
    alike and separately; a challenger counts its reloads in its own metric, logs them with
    ``set: challenger``, and its failure at start-up only leaves the gateway without one."""

    def __init__(self, path: str | Path, attribute_types: dict[str, str], challenger: bool = False):
        self.path = Path(path)
        self._types = attribute_types
        self.challenger = challenger
        self._reloads = CHALLENGER_RELOADS if challenger else RULES_RELOADS
        self._name = "challenger rules" if challenger else "rules"
        self._active: _Active | None = None
        self.last_error: str | None = None
        self._watch = FileWatch(self._fingerprint, self.reload_quietly)
        self.listeners: list = []   # called with the new RuleSet after every successful swap

    @property
    def current(self) -> RuleSet:
        return self._active.rules

    @property
    def loaded(self) -> bool:
        return self._active is not None

    def load(self) -> RuleSet:
        """Load from disk and swap in; raises RuleLoadError and keeps the running set on failure."""
        try:
            rules = load_rules(self.path, self._types)
        except RuleLoadError as exc:
            self._reloads.labels("failure").inc()
            self.last_error = "\n".join(exc.errors)
            if self._active is not None or self.challenger:
                # At start-up the caller reports a champion's failure and exits.
                version = self._active.rules.version if self._active is not None else None
                log.error("%s reload failed, keeping version %s:\n%s", self._name, version,
                          self.last_error, extra={"event": "rules_reload", "outcome": "failure",
                                                  "version": version, "set": self._set})
            raise
        old = self._active
        self._active = _Active(rules)
        for listener in self.listeners:
            listener(rules)
        if old is not None:
            if self.challenger:
                pass   # the challenger's version is in the decision log, not in rules_info
            elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                # prometheus-client cannot remove a label set across processes: zero it.
                RULES_INFO.labels(old.rules.version, str(len(old.rules.rules))).set(0)
            else:
                RULES_INFO.remove(old.rules.version, str(len(old.rules.rules)))
            old.retired = True
            old.release()
        if not self.challenger:
            RULES_INFO.labels(rules.version, str(len(rules.rules))).set(1)
        self._reloads.labels("success").inc()
        self.last_error = None
        log.info("%s version %s loaded: %d rules, %d counters", self._name, rules.version,
                 len(rules.rules), len(rules.counters),
                 extra={"event": "rules_reload", "outcome": "success", "version": rules.version,
                        "set": self._set})
        return rules

    @property
    def _set(self) -> str:
        return "challenger" if self.challenger else "champion"

    @contextlib.contextmanager
    def use(self):
        """The rule set one request decides with, pinned until the request ends (None while
        none is loaded: a challenger that never loaded)."""
        active = self._active
        if active is None:
            yield None
            return
        active.users += 1
        try:
            yield active.rules
        finally:
            active.users -= 1
            active.release()

    def reload_quietly(self) -> None:
        with contextlib.suppress(RuleLoadError):
            self.load()

    def _fingerprint(self) -> tuple:
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                for p in self.path.glob("*.yaml")))
        except OSError:
            return ()

    def watch(self, interval_s: float = 1.0) -> None:
        """Reload when the directory's files change and then stay unchanged (gateway.watch)."""
        self._watch.start(interval_s)

    async def close(self) -> None:
        await self._watch.stop()
        if self._active is not None:
            self._active.retired = True
            self._active.release()
