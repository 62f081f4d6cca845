"""The admin server: health, readiness, metrics and the admin API (docs/protocol.md §5 "Admin API", §6)."""

from __future__ import annotations

import os
from pathlib import Path
import signal

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import multiprocess

from auth.admin import route, setup_admin
from auth.audit import ADMIN_ACTOR
from gateway.lists import admin_routes
from gateway import __version__
from gateway.rates import RatesError
from metrics.identity import (KEY_EXPIRY_WARNING_S, BuildInfo, WorkerProcesses,
                              expiring_keys_registry)
from rules import RuleLoadError
from state.base import StateError


_OPENAPI = Path(__file__).with_name("admin-openapi.yaml")   # the admin API, described

def _json(data: dict, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@web.middleware
async def _json_http_errors(request: web.Request, handler):
    # aiohttp's own answers (unknown path, wrong method) are text; the admin API speaks JSON.
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return web.json_response({"error": code, "message": exc.reason}, status=exc.status,
                                 headers={k: v for k, v in exc.headers.items()
                                          if k.lower() == "allow"})


def _rules_version(services) -> str | None:
    try:
        return services.rulebook.current.version
    except AttributeError:   # not loaded yet
        return None


def build_admin_app(services, admin_token: str | None) -> web.Application:
    app = web.Application(middlewares=[_json_http_errors])
    # Computed at each scrape, beside the counters: the build, and under workers the
    # process metrics of every worker (metrics.identity says why).
    identity = CollectorRegistry(auto_describe=False)
    identity.register(BuildInfo(__version__, lambda: _rules_version(services)))
    supervisor = os.environ.get("TXGATE_SUPERVISOR_PID")
    if supervisor:
        identity.register(WorkerProcesses(int(supervisor)))

    async def healthz(_):
        return _json({"status": "ok"})

    async def readyz(_):
        details: dict = {"rules": None, "state": "ok", "decision_log": services.decision_log.failing}
        ready = True
        try:
            details["rules"] = services.rulebook.current.version
        except AttributeError:
            ready = False
        if services.rulebook.last_error:
            details["rules_reload_error"] = services.rulebook.last_error
        if services.rates.last_error:
            details["rates_reload_error"] = services.rates.last_error
        if services.challenger is not None:
            # A challenger never decides alone: its failure is reported, never unready.
            details["challenger"] = (services.challenger.current.version
                                     if services.challenger.loaded else None)
            if services.challenger.last_error:
                details["challenger_reload_error"] = services.challenger.last_error
        try:
            await services.state.ping()
        except StateError as exc:
            details["state"] = f"unavailable ({exc.operation})"
            # Which routes still serve, and how; ready while one does, unless configured not.
            degraded = {route.name: route.on_state_error for route in services.config.routes
                        if route.on_state_error != "fail_closed"}
            details["degraded_routes"] = degraded
            details["refusing_routes"] = [route.name for route in services.config.routes
                                          if route.name not in degraded]
            if not degraded or services.config.readiness.state_down == "unready":
                ready = False
        return _json({"ready": ready, **details}, 200 if ready else 503)

    async def metrics(_):
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # A fresh registry per scrape sums every worker's files (prometheus-client docs).
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        body = generate_latest(registry) + generate_latest(identity) + await _expiring_keys()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _expiring_keys() -> bytes:
        # Read from the shared store at scrape time: every worker and gateway reports the same
        # fleet-wide numbers (alerts take max, not sum), with no per-process state to go stale.
        try:
            counts = await services.credentials.expiring_keys(KEY_EXPIRY_WARNING_S)
        except StateError:
            return b""        # the store is down: txgate_state_errors_total says so already
        return generate_latest(expiring_keys_registry(counts))

    async def reload_rules(_):
        try:
            services.rates.load()   # the exchange rates reload with the rules
            rules = services.rulebook.load()
        except RatesError as exc:
            return _json({"error": "rates_invalid", "errors": exc.errors,
                          "version": services.rulebook.current.version}, 422)
        except RuleLoadError as exc:
            return _json({"error": "rules_invalid", "errors": exc.errors,
                          "version": services.rulebook.current.version}, 422)
        answer = {"version": rules.version, "rules": len(rules.rules)}
        challenger = services.challenger
        if challenger is not None:
            services.load_challenger()   # a failure leaves the champion deciding: reported here
            answer["challenger"] = challenger.current.version if challenger.loaded else None
            if challenger.last_error:
                answer["challenger_errors"] = challenger.last_error.splitlines()
        supervisor = os.environ.get("TXGATE_SUPERVISOR_PID")
        if supervisor:   # the other workers reload too (gateway.workers)
            os.kill(int(supervisor), signal.SIGUSR1)
        return _json(answer)

    async def openapi(_):
        return web.Response(body=_OPENAPI.read_bytes(), content_type="application/yaml")

    app.router.add_routes([route("GET", "/admin/openapi.yaml", openapi),
                           route("GET", "/healthz", healthz),
                           route("GET", "/readyz", readyz),
                           route("GET", "/metrics", metrics),
                           route("POST", "/admin/rules/reload", reload_rules),
                           *admin_routes(services.list_admin, ADMIN_ACTOR)])
    # Credential endpoints and the bearer check that guards every /admin/ path.
    setup_admin(app, services.credentials, admin_token, totp=services.stepup.totp)
    return app
