"""Live lists for operators: ``/admin/lists/NAME`` and ``txgate lists``, one audit line per change.

Only a list the running rules (champion or challenger) declare ``{store: redis}`` can be
changed (a typo must not create a list nobody reads). Each member added or removed is one decision-log line
``{"ts", "type": "audit", "actor", "action": "add" | "remove", "kind": "list", "id": NAME,
"value", "reason", "expires_at"}``; ``txgate rules replay`` skips it like every audit line.

    GET    /admin/lists/NAME   -> {"list", "members": [{value, reason, added_at, expires_at, actor}]}
    POST   /admin/lists/NAME   {"values": [...], "reason"?, "ttl"?: "30d"} -> {"list", "added": [...]}
    DELETE /admin/lists/NAME   {"values": [...], "reason"?} -> {"list", "removed": [values]}
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from aiohttp import web

from auth.admin import route
from metrics.definitions import LIST_CHANGES, LIST_REFUSED
from rules.counters import parse_window
from state.base import StateError
from state.lists import MAX_REASON_CHARS, ListError, LiveLists, Member


class ListRefused(Exception):
    """A list change refused before anything was written: status, error code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def parse_ttl(text) -> int | None:
    """``--ttl 30d`` / ``"ttl": "30d"`` in seconds (the counter-window syntax), None if absent."""
    if text is None:
        return None
    try:
        return parse_window(text)
    except ValueError as exc:
        raise ListError(f"ttl: {exc}") from None


class ListAdmin:
    """Changes of the live lists of the running rules, audited and counted."""

    def __init__(self, lists: LiveLists, declared: Callable[[], Sequence[str]],
                 write: Callable[[dict], None], clock: Callable[[], float] = time.time):
        self._lists = lists
        self._declared = declared
        self._write = write
        self._clock = clock

    def _check(self, name: str) -> None:
        if name not in self._declared():
            raise ListRefused(404, "unknown_list",
                              f"no live list {name!r} in the running rules (declare it "
                              "`lists: {NAME: {store: redis}}` in a rule file)")

    async def _run(self, name: str, change):
        try:
            self._check(name)
            return await change()
        except ListRefused as exc:
            LIST_REFUSED.labels(exc.code).inc()
            raise
        except ListError as exc:
            LIST_REFUSED.labels("invalid_request").inc()
            raise ListRefused(400, "invalid_request", str(exc)) from None
        except StateError as exc:
            LIST_REFUSED.labels("state_unavailable").inc()
            raise ListRefused(503, "state_unavailable", str(exc)) from None

    async def add(self, name: str, values, *, actor: str, reason=None, ttl=None) -> list[Member]:
        """Add or renew members; ``ttl`` as ``30d`` (absent: until removed)."""
        async def change():
            added = await self._lists.add(name, values, actor=actor, reason=reason,
                                          ttl_s=parse_ttl(ttl))
            for member in added:
                self._audit(actor, "add", name, member.value, reason, member.expires_at)
            LIST_CHANGES.labels(name, "add").inc(len(added))
            return added
        return await self._run(name, change)

    async def remove(self, name: str, values, *, actor: str, reason=None) -> list[str]:
        async def change():
            if reason is not None and (not isinstance(reason, str)
                                       or len(reason) > MAX_REASON_CHARS):
                raise ListError(f"reason: expected a string of at most {MAX_REASON_CHARS} "
                                "characters")
            removed = await self._lists.remove(name, values)
            for value in removed:
                self._audit(actor, "remove", name, value, reason, None)
            LIST_CHANGES.labels(name, "remove").inc(len(removed))
            return removed
        return await self._run(name, change)

    async def show(self, name: str) -> list[Member]:
        return await self._run(name, lambda: self._lists.show(name))

    def _audit(self, actor, action, name, value, reason, expires_at) -> None:
        self._write({"ts": self._clock(), "type": "audit", "actor": actor, "action": action,
                     "kind": "list", "id": name, "value": value, "reason": reason,
                     "expires_at": expires_at})


def admin_routes(admin: ListAdmin, actor: str) -> list[web.RouteDef]:
    """The /admin/lists routes (behind the admin app's bearer check)."""

    async def body(request: web.Request) -> dict:
        try:
            data = await request.json() if request.can_read_body else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            LIST_REFUSED.labels("invalid_request").inc()
            raise ListRefused(400, "invalid_request", 'body must be a JSON object {"values": [...]}')
        return data

    def answer(call):
        async def handler(request: web.Request) -> web.Response:
            try:
                return web.json_response(await call(request, request.match_info["name"]))
            except ListRefused as exc:
                return web.json_response({"error": exc.code, "message": str(exc)},
                                         status=exc.status)
        return handler

    async def show(request, name):
        return {"list": name, "members": [m.to_json() for m in await admin.show(name)]}

    async def add(request, name):
        data = await body(request)
        added = await admin.add(name, data.get("values"), actor=actor, reason=data.get("reason"),
                                ttl=data.get("ttl"))
        return {"list": name, "added": [m.to_json() for m in added]}

    async def remove(request, name):
        data = await body(request)
        removed = await admin.remove(name, data.get("values"), actor=actor,
                                     reason=data.get("reason"))
        return {"list": name, "removed": removed}

    return [route("GET", "/admin/lists/{name}", answer(show)),
            route("POST", "/admin/lists/{name}", answer(add)),
            route("DELETE", "/admin/lists/{name}", answer(remove))]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


async def command(admin: ListAdmin, action: str, name: str, values: Sequence[str], *,
                  actor: str, reason: str | None, ttl: str | None, out: TextIO) -> int:
    """``txgate lists add|remove|show NAME VALUE…``; ListRefused is the CLI's one error line."""
    if action == "show":
        if values:
            raise ListRefused(400, "invalid_request", "show takes no values")
        members = await admin.show(name)
        for m in members:
            out.write(f"{m.value}\texpires {_when(m.expires_at)}\tadded {_when(m.added_at)} by "
                      f"{m.actor}\t{m.reason or ''}\n")
        out.write(f"{len(members)} members in {name}\n")
        return 0
    if not values:
        raise ListRefused(400, "invalid_request", f"{action}: give one or more values")
    if action == "add":
        added = await admin.add(name, list(values), actor=actor, reason=reason, ttl=ttl)
        out.write(f"added {len(added)} to {name}\n")
        return 0
    if ttl is not None:
        raise ListRefused(400, "invalid_request", "remove takes no --ttl")
    removed = await admin.remove(name, list(values), actor=actor, reason=reason)
    out.write(f"removed {len(removed)} of {len(values)} from {name}\n")
    return 0
