"""Run txgate: the proxy on ``listen``, the admin server on ``admin_listen``, clean shutdown.

SIGTERM stops accepting, lets in-flight requests finish (up to ``limits.shutdown_grace_s``),
flushes the decision log and exits 0. SIGHUP reloads the rules when ``reload: signal``.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.admin import build_admin_app
from gateway.config import Config
from gateway.pipeline import Pipeline
from gateway.services import Services

log = logging.getLogger("txgate.server")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class GatewayServer:
    """One process: builds its services, serves until ``stop()``, then shuts down in order."""

    def __init__(self, config: Config, master_key, admin_token: str | None,
                 reuse_port: bool = False):
        self.config = config
        self.services = Services(config, master_key)
        self._admin_token = admin_token
        self._reuse_port = reuse_port
        self._stopping = asyncio.Event()
        self._runners: list[web.BaseRunner] = []
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        await self.services.start()
        pipeline = Pipeline(self.services)
        grace = self.config.limits.shutdown_grace_s
        proxy = web.ServerRunner(web.Server(pipeline.handle, access_log=None),
                                 shutdown_timeout=grace,
                                 handle_signals=False)
        admin = web.AppRunner(build_admin_app(self.services, self._admin_token),
                              shutdown_timeout=1, handle_signals=False, access_log=None)
        for name, runner, address in (("listen", proxy, self.config.listen),
                                      ("admin", admin, self.config.admin_listen)):
            await runner.setup()
            host, port = _split(address)
            site = web.TCPSite(runner, host, port, reuse_port=self._reuse_port or None,
                               backlog=1024)
            await site.start()
            self.ports[name] = runner.addresses[0][1]
            self._runners.append(runner)
        if self.config.rules.reload == "watch":
            self.services.rulebook.watch()
        log.info("txgate listening on %s (admin %s), rules %s", self.config.listen,
                 self.config.admin_listen, self.services.rulebook.current.version)

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        if self.config.rules.reload == "signal":
            loop.add_signal_handler(signal.SIGHUP, self.services.rulebook.reload_quietly)
        # SIGUSR1 is the workers' internal "reload now": the supervisor broadcasts it when
        # one worker was asked through the admin API, so that every worker reloads.
        loop.add_signal_handler(signal.SIGUSR1, self.services.rulebook.reload_quietly)

    def stop(self) -> None:
        self._stopping.set()

    async def serve(self) -> None:
        await self._stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        # Proxy first: cleanup() closes the listener, then waits for in-flight handlers.
        served = bool(self._runners)
        for runner in self._runners:
            await runner.cleanup()
        await self.services.close()
        if served:
            log.info("txgate stopped")
