"""``txgate run``: one process, or N workers sharing the port with SO_REUSEPORT.

With workers, metrics use prometheus-client's multiprocess mode: txgate creates the directory
before any metric exists, each worker writes its own files, ``/metrics`` on any worker sums
them, a dead worker is marked with ``mark_process_dead`` and the directory is removed at exit.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import sys
import tempfile


class StartupError(Exception):
    """The gateway cannot start; the message says why in one line per problem."""


# Allocations between two collections of the young generation (Python's default: 700).
GC_YOUNG = 10_000


def tune_gc() -> None:
    """Keep the cycle collector off what startup loaded, and out of the way of requests.

    A request allocates thousands of containers (aiohttp's request and response objects,
    headers, attributes, the decision), so with the defaults the young generation is collected
    every few requests and a full collection, every ~2,000 requests, walks everything startup
    loaded (rules, config, metrics, modules): measured under load, 10 % of the CPU and pauses
    of 60 ms at the tail (docs/performance.md). What startup loaded lives as long as the
    process: frozen, no collection walks it again (and forked workers keep sharing its pages).
    Collecting the young generation every GC_YOUNG allocations instead of 700 costs the same per
    object and a tenth of the fixed cost; cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, 10)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(config, master_key, admin_token: str | None, reuse_port: bool) -> int:
    """Serve in this process until SIGTERM; 0 on a clean stop."""
    from gateway.server import GatewayServer
    from gateway.rates import RatesError
    from rules import RuleLoadError

    # A reload signal that arrives while the server is still starting must not kill it (the
    # default action of both); the server installs its real handlers once it serves.
    for signum in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    _install_uvloop()

    async def main() -> int:
        try:
            server = GatewayServer(config, master_key, admin_token, reuse_port=reuse_port)
        except OSError as exc:   # a file of the config (decision log, TLS) cannot be opened
            raise StartupError(f"cannot open {exc.filename}: {exc.strerror or exc}") from None
        try:
            await server.start()
        except RuleLoadError as exc:
            await server.shutdown()
            raise StartupError("rules did not load:\n" + "\n".join(exc.errors)) from None
        except RatesError as exc:
            await server.shutdown()
            raise StartupError("exchange rates did not load:\n" + "\n".join(exc.errors)) from None
        except OSError as exc:
            await server.shutdown()
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from None
        server.install_signals()
        tune_gc()
        await server.serve()
        return 0

    return asyncio.run(main())


def run(config, workers: int) -> int:
    from auth.errors import MasterKeyError
    from auth.keys import load_master_key
    from gateway.errors import UsageError

    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if workers > 1 and config.state.backend == "memory":
        raise UsageError("--workers N>1 needs state.backend: redis "
                         "(memory counters and nonces would be per worker)")
    try:
        key = load_master_key(config.auth.master_key_file)
    except MasterKeyError as exc:
        raise UsageError(str(exc)) from None
    token = os.environ.get("TXGATE_ADMIN_TOKEN")
    try:
        if workers == 1:
            return serve(config, key, token, reuse_port=False)
        return _supervise(config, key, token, workers)
    except StartupError as exc:
        raise UsageError(str(exc)) from None


def _supervise(config, key, token: str | None, workers: int) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="txgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    children: list[int] = []
    # Workers ask the supervisor to broadcast a rules reload through this variable's pid.
    os.environ["TXGATE_SUPERVISOR_PID"] = str(os.getpid())
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = serve(config, key, token, reuse_port=True)
                except StartupError as exc:
                    print(f"txgate: {exc}", file=sys.stderr)
                finally:
                    os._exit(code)
            children.append(pid)

        def forward(signum, _frame):
            # SIGTERM/SIGINT stop every worker; SIGHUP/SIGUSR1 make every worker reload.
            sent = signal.SIGTERM if signum in (signal.SIGTERM, signal.SIGINT) else signum
            for child in children:
                try:
                    os.kill(child, sent)
                except ProcessLookupError:
                    pass

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, forward)
        from prometheus_client import multiprocess
        status = 0
        while children:
            pid, code = os.wait()
            if pid in children:
                children.remove(pid)
                multiprocess.mark_process_dead(pid)
                if os.waitstatus_to_exitcode(code) != 0:
                    status = 1
                    forward(signal.SIGTERM, None)   # one worker failed: stop the rest cleanly
        return status
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
