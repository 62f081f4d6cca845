"""The ``txgate`` command (docs/protocol.md §2). User mistakes end as one line on stderr, exit 1."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import sys

from gateway import logs
from gateway.errors import UsageError
from gateway.logs import LEVELS


def _parser() -> argparse.ArgumentParser:
    from gateway import __version__
    parser = argparse.ArgumentParser(prog="txgate", description="Fraud and authentication gateway")
    parser.add_argument("--version", action="version",
                        version=f"txgate {__version__} (Python {platform.python_version()})")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=None, help="txgate.yaml (default: ./txgate.yaml if present)")
        p.add_argument("--log-level", default=None, type=str.upper, choices=LEVELS,
                       help="default: TXGATE_LOG_LEVEL, else INFO (WARNING for the demo)")
        return p

    run = command("run", "serve")
    run.add_argument("--workers", type=int, default=1)
    demo = command("demo", "run the embedded demo")
    demo.add_argument("--once", action="store_true", help="exit after the scripted run")
    demo.add_argument("--keep", action="store_true",
                      help="keep the demo's decision log (removed at exit otherwise)")

    config = sub.add_parser("config", help="check a configuration without starting")
    csub = config.add_subparsers(dest="action", required=True)
    csub.add_parser("check").add_argument("--config", default=None)

    rules = sub.add_parser("rules", help="check, test and replay rule files")
    rsub = rules.add_subparsers(dest="action", required=True)
    for name in ("check", "test"):
        p = rsub.add_parser(name)
        p.add_argument("dir", nargs="?", default=None)
        p.add_argument("--config", default=None)
    rsub.choices["test"].add_argument(
        "--require-coverage", action="store_true",
        help="fail when a rule has no case or scenario step expecting it to match")
    replay = rsub.add_parser("replay")
    replay.add_argument("--log", required=True)
    replay.add_argument("--rules", default=None)
    replay.add_argument("--config", default=None)
    replay.add_argument("--labels", default=None, metavar="FILE",
                        help="CSV or JSONL: request_id, label (fraud|genuine), reported_at, amount")
    replay.add_argument("--skip-bad-labels", action="store_true",
                        help="leave bad label rows out (reported) instead of failing")
    replay.add_argument("--mature-after", type=float, default=None, metavar="DAYS",
                        help="unlabelled transactions older than DAYS count as genuine")
    replay.add_argument("--as-of", default=None, metavar="ISO8601",
                        help="when labels are read (default: the log's last record)")
    replay.add_argument("--changes", action="store_true", help="list every changed transaction")
    replay.add_argument("--json", action="store_true", help="one JSON document (docs/rules.md)")
    replay.add_argument("--html", default=None, metavar="FILE",
                        help="also write a self-contained page with the table and plots")
    replay.add_argument("--recompute", action="store_true",
                        help="recompute the candidate's counters over the log, in time order")

    explain = sub.add_parser("explain", help="why one logged request was decided as it was")
    explain.add_argument("request_id")
    explain.add_argument("--log", required=True)
    explain.add_argument("--rules", default=None,
                         help="what these rules decide (default: the configured rules)")
    explain.add_argument("--config", default=None)

    auth = sub.add_parser("auth", help="manage credentials")
    asub = auth.add_subparsers(dest="action", required=True)
    add_client = asub.add_parser("add-client")
    add_client.add_argument("id")
    kind = add_client.add_mutually_exclusive_group(required=True)
    kind.add_argument("--hmac", action="store_true")
    kind.add_argument("--public-key", metavar="PEM")
    add_key = asub.add_parser("add-key", help="give a client one more key (key roll)")
    add_key.add_argument("client")
    kind = add_key.add_mutually_exclusive_group(required=True)
    kind.add_argument("--hmac", action="store_true")
    kind.add_argument("--public-key", metavar="PEM")
    add_key.add_argument("--key-id", default=None, help="the RFC 9421 keyid (default CLIENT/<id>)")
    add_key.add_argument("--expires", default=None, metavar="DURATION", help="e.g. 90d, 12h")
    enroll = asub.add_parser("enroll-totp")
    enroll.add_argument("user")
    enroll.add_argument("--force", action="store_true",
                        help="stage a new secret over an enrolled one (confirm-totp activates it)")
    confirm = asub.add_parser("confirm-totp", help="activate a staged TOTP secret")
    confirm.add_argument("user")
    confirm.add_argument("code")
    rekey = asub.add_parser("rekey", help="re-seal every secret under the current master key")
    rekey.add_argument("-v", "--verbose", action="store_true", help="print each record moved")
    add_device = asub.add_parser("add-device")
    add_device.add_argument("user")
    add_device.add_argument("--public-key", metavar="PEM", required=True)
    add_device.add_argument("--name", default=None)
    asub.add_parser("list")
    revoke = asub.add_parser("revoke")
    revoke.add_argument("kind", choices=("client", "key", "totp", "device"))
    revoke.add_argument("id")
    for p in asub.choices.values():
        p.add_argument("--config", default=None)

    lists = sub.add_parser("lists", help="change and show live lists (lists: {NAME: {store: redis}})")
    lsub = lists.add_subparsers(dest="action", required=True)
    for name in ("add", "remove", "show"):
        p = lsub.add_parser(name)
        p.add_argument("list")
        p.add_argument("values", nargs="*", metavar="VALUE")
        p.add_argument("--config", default=None)
        if name != "show":
            p.add_argument("--reason", default=None)
        if name == "add":
            p.add_argument("--ttl", default=None, metavar="DURATION",
                           help="the members expire after it, e.g. 30d (default: until removed)")
    return parser


def _config_path(args) -> str | None:
    if args.config:
        return args.config
    return "txgate.yaml" if os.path.exists("txgate.yaml") else None


def _load_config(args):
    from gateway.config import load_config
    return load_config(_config_path(args))


def _rules_dir(args, given: str | None) -> str:
    if given:
        return given
    if _config_path(args):
        return _load_config(args).rules.path
    from gateway.config import DEFAULT_RULES
    return DEFAULT_RULES


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The demo's output is its table; a one-shot command's error is its one "txgate:" line.
    quiet = {"run": "INFO", "demo": "WARNING"}.get(args.command, "CRITICAL")
    from gateway.config import ConfigError
    try:
        logs.setup(getattr(args, "log_level", None), default=quiet)
    except ValueError as exc:   # a bad TXGATE_LOG_LEVEL
        print(f"txgate: TXGATE_LOG_LEVEL: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "run":
            from gateway.workers import run
            return run(_load_config(args), args.workers)
        if args.command == "demo":
            from gateway.demo.run import run_demo
            return run_demo(once=args.once, keep=args.keep)
        if args.command == "config":
            from gateway.configcheck import check
            return check(_config_path(args), sys.stdout, sys.stderr)
        if args.command == "rules":
            return _rules(args)
        if args.command == "explain":
            from rules import commands
            return commands.explain(args.log, args.request_id, _rules_dir(args, args.rules))
        if args.command == "lists":
            return _lists(args)
        return _auth(args)
    except (ConfigError, UsageError) as exc:
        for line in str(exc).splitlines():
            print(f"txgate: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `| head` closed the pipe: stop quietly (and keep Python's exit flush from failing).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _rules(args) -> int:
    from rules import commands
    # With a config, literals and attribute names are checked against the routes' fields.
    types = config = None
    if _config_path(args):
        from gateway.routing import Router
        config = _load_config(args)
        types = Router.of(config).attribute_types() or None
    if args.action == "check":
        return commands.check(_rules_dir(args, args.dir), attribute_types=types,
                              config=_config_path(args))
    if args.action == "test":
        from gateway.rates import RatesError
        from gateway.scenario_runner import ScenarioRunner
        try:
            runner = ScenarioRunner(config)
        except RatesError as exc:
            raise UsageError("\n".join(exc.errors)) from None
        # Scenarios run through the gateway's own extraction (with a config) and counters.
        return commands.run_tests(_rules_dir(args, args.dir), attribute_types=types,
                                  scenario_runner=runner, require_coverage=args.require_coverage)
    from gateway.backtest import RecomputedCounters
    from gateway.config import Config
    from gateway.velocity import settle_window_s
    # The challenge lifetime tells an abandoned step-up from one still answerable.
    gateway = config or Config()
    recompute = functools.partial(
        RecomputedCounters, settle_s=settle_window_s(gateway.limits.upstream_timeout_s))
    return commands.replay(args.log, _rules_dir(args, args.rules), labels_path=args.labels,
                           skip_bad_labels=args.skip_bad_labels, mature_after_days=args.mature_after,
                           as_of=args.as_of, challenge_ttl_s=gateway.auth.challenge_ttl_s,
                           changes=args.changes, json_out=args.json,
                           recompute=recompute if args.recompute else None, html_path=args.html)


def _auth(args) -> int:
    from auth import commands
    from auth.errors import CredentialError, MasterKeyError
    from auth.keys import load_master_key
    from state import StateError, create_backend
    from auth.audit import audit_trail, cli_actor
    from auth.credentials import CredentialStore
    from auth.totp import Totp
    from gateway.decision_log import DecisionLog, open_sinks

    config = _load_config(args)
    try:
        key = load_master_key(config.auth.master_key_file)
    except MasterKeyError as exc:
        raise UsageError(str(exc)) from None
    totp = Totp(config.auth.totp.digits, config.auth.totp.period, config.auth.totp.valid_window)
    if config.state.backend == "memory":
        raise UsageError("credentials need a shared store: set state.backend: redis in the config "
                         "(the memory backend lives inside one gateway process: the README's "
                         "quick start shows a trial on a local redis-server)")

    async def go() -> int:
        state = create_backend(config.state.backend, **config.state.backend_options())
        # Every change is a line in the decision log's sinks (auth.audit).
        audit_log = DecisionLog(open_sinks(config))
        audit_log.start()
        await state.start()
        try:
            store = CredentialStore(state, key, audit=audit_trail(audit_log.write, cli_actor()))
            # A wrong key would seal new secrets that no gateway can open: refuse first.
            await store.check_master_key()
            if args.action == "add-client":
                pem = _read(args.public_key) if args.public_key else None
                return await commands.add_client(store, args.id, args.hmac, pem, sys.stdout)
            if args.action == "add-key":
                pem = _read(args.public_key) if args.public_key else None
                return await commands.add_key(store, args.client, args.hmac, pem, args.key_id,
                                              args.expires, sys.stdout)
            if args.action == "enroll-totp":
                return await commands.enroll_totp(store, args.user, out=sys.stdout,
                                                  totp=totp, replace=args.force)
            if args.action == "confirm-totp":
                return await commands.confirm_totp(store, args.user, args.code, sys.stdout,
                                                   totp)
            if args.action == "rekey":
                return await commands.rekey(store, sys.stdout, args.verbose)
            if args.action == "add-device":
                return await commands.add_device(store, args.user, _read(args.public_key),
                                                 args.name, sys.stdout)
            if args.action == "list":
                return await commands.list_credentials(store, sys.stdout)
            return await commands.revoke(store, args.kind, args.id, sys.stdout)
        finally:
            await state.close()
            await audit_log.close()

    try:
        return asyncio.run(go())
    except (CredentialError, MasterKeyError, StateError) as exc:
        raise UsageError(str(exc)) from None


def _lists(args) -> int:
    from auth.audit import cli_actor
    from gateway.decision_log import DecisionLog, open_sinks
    from gateway.lists import ListAdmin, ListRefused, command
    from gateway.routing import Router
    from rules import RuleLoadError, load_rules
    from state import create_backend
    from state.lists import LiveLists

    config = _load_config(args)
    if config.state.backend == "memory":
        raise UsageError("live lists need a shared store: set state.backend: redis in the config "
                         "(the memory backend lives inside one gateway process; use its admin "
                         "API, POST /admin/lists/NAME)")
    types = Router.of(config).attribute_types() or None
    try:
        # The configured rules say which lists are live: a typo must not create a list.
        declared = load_rules(config.rules.path, types).live_lists
        if config.rules.challenger:
            declared += load_rules(config.rules.challenger, types).live_lists
    except RuleLoadError as exc:
        raise UsageError("\n".join(exc.errors)) from None

    async def go() -> int:
        state = create_backend(config.state.backend, config.state.url, config.state.cluster,
                               config.state.timeout_ms)
        # Every change is an audit line in the decision log's sinks, as for credentials.
        audit_log = DecisionLog(open_sinks(config))
        audit_log.start()
        await state.start()
        try:
            admin = ListAdmin(LiveLists(state), lambda: declared, audit_log.write)
            return await command(admin, args.action, args.list, args.values, actor=cli_actor(),
                                 reason=getattr(args, "reason", None),
                                 ttl=getattr(args, "ttl", None), out=sys.stdout)
        finally:
            await state.close()
            await audit_log.close()

    try:
        return asyncio.run(go())
    except ListRefused as exc:
        raise UsageError(str(exc)) from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
