"""Run txgate: the proxy on ``listen``, the admin server on ``admin_listen``, clean shutdown.

SIGTERM stops accepting, lets in-flight requests finish (up to ``limits.shutdown_grace_s``),
flushes the decision log and exits 0. SIGHUP reloads the rules unless ``reload: off`` (with
``watch`` too: an operator who just edited a file should not have to wait for the poll) and
the TLS certificate and key when ``tls`` is set.

``limits.client_timeout_s`` bounds a slow client: aiohttp closes a connection whose request
headers are not complete within it (its keep-alive timer, which also runs while headers are
still arriving), and ``_BodyDeadline`` answers 408 when the body is not complete within it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from aiohttp import web

from gateway.admin import build_admin_app
from gateway.config import Config, TlsConfig
from gateway.errors import GatewayError
from gateway.pipeline import Pipeline
from gateway.services import Services

log = logging.getLogger("txgate.server")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class ClientTimeout(GatewayError, TimeoutError):
    """The client did not send its body in time. A TimeoutError too, so that aiohttp's
    lingering read of the unread body stops quietly and closes the connection."""

    def __init__(self):
        super().__init__(408, "client_timeout", "the request body did not arrive in time")


def server_tls_context(tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        # Optional: clients without a certificate still sign their requests (RFC 9421).
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


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
        self.tls = server_tls_context(config.tls) if config.tls else None

    async def start(self) -> None:
        await self.services.start()
        self._pipeline = Pipeline(self.services)
        grace = self.config.limits.shutdown_grace_s
        # keepalive_timeout also closes a connection whose first request's headers are not
        # complete in time (aiohttp's default is an hour).
        # auto_decompress off: the body is signed (Content-Digest, RFC 9530) and forwarded
        # as the bytes on the wire; decoding it here checked the digest against other bytes,
        # forwarded them under the client's Content-Encoding, and made bad encodings a 500.
        proxy = web.ServerRunner(web.Server(self._handle, access_log=None, auto_decompress=False,
                                            keepalive_timeout=self.config.limits.client_timeout_s),
                                 shutdown_timeout=grace,
                                 handle_signals=False)
        admin = web.AppRunner(build_admin_app(self.services, self._admin_token),
                              shutdown_timeout=1, handle_signals=False, access_log=None)
        for name, runner, address in (("listen", proxy, self.config.listen),
                                      ("admin", admin, self.config.admin_listen)):
            await runner.setup()
            host, port = _split(address)
            site = web.TCPSite(runner, host, port, reuse_port=self._reuse_port or None,
                               backlog=1024, ssl_context=self.tls if name == "listen" else None)
            await site.start()
            self.ports[name] = runner.addresses[0][1]
            self._runners.append(runner)
        if self.config.rules.reload == "watch":
            self.services.rulebook.watch()
            if self.services.challenger is not None:
                self.services.challenger.watch()
            self.services.rates.watch()
        log.info("txgate listening on %s (admin %s), rules %s", self.config.listen,
                 self.config.admin_listen, self.services.rulebook.current.version)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        timer = None
        if request.body_exists and not request.content.is_eof():
            timer = asyncio.get_running_loop().call_later(
                self.config.limits.client_timeout_s, _expire_body, request.content)
        try:
            return await self._pipeline.handle(request)
        finally:
            if timer is not None:
                timer.cancel()

    def reload_tls(self) -> None:
        """Load the certificate and key files again; a bad pair keeps the running one."""
        tls = self.config.tls
        try:
            server_tls_context(tls)   # validate into a scratch context first: a failed
            # load_cert_chain may leave a live context with a new certificate and the old key
            self.tls.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS certificate reload failed, keeping the running one: %s", exc)
            return
        log.info("TLS certificate reloaded from %s", tls.cert_file)

    def _on_sighup(self) -> None:
        if self.config.rules.reload != "off":
            self.services.reload_rules()
            self.services.rates.reload_quietly()
        elif self.tls is None:
            log.warning("SIGHUP ignored: rules.reload is off and there is no TLS to reload")
        if self.tls is not None:
            self.reload_tls()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        # SIGUSR1 is the workers' internal "reload now": the supervisor broadcasts it when
        # one worker was asked through the admin API, so that every worker reloads.
        loop.add_signal_handler(signal.SIGUSR1, self._on_reload)

    def _on_reload(self) -> None:
        self.services.reload_rules()
        self.services.rates.reload_quietly()

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


def _expire_body(content) -> None:
    if not content.is_eof():
        content.set_exception(ClientTimeout())
