"""``txgate config check``: what ``txgate run`` would refuse, found without starting anything.

Every problem is one ``FILE:LINE: ...`` line and all of them are reported at once: the file's
keys and values, the rules compiled against the routes' transaction fields, the master key
from the environment (or its key file), and the decision log's directory (txgate never creates
directories: that is the deployment's job, e.g. systemd's ``LogsDirectory=``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from auth.errors import MasterKeyError
from auth.keys import load_master_key
from gateway.config import Config, ConfigError, key_line, load_config
from gateway.routing import Router
from rules import RuleLoadError, load_rules
from rules.yamlsrc import load_yaml


def check(path: str | None, out: TextIO, err: TextIO, environ=None) -> int:
    """Print every problem on ``err`` (0 when none, else 1) and a summary or notes on ``out``."""
    environ = os.environ if environ is None else environ
    try:
        config = load_config(path, environ)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"txgate: {line}", file=err)
        return 1
    where = _Where(path)
    problems: list[str] = []
    version = None
    try:
        with load_rules(config.rules.path, Router.of(config).attribute_types()) as rules:
            version, count = rules.version, len(rules.rules)
    except RuleLoadError as exc:
        problems.extend(exc.errors)
    challenger = ""
    if config.rules.challenger:
        # At run time a broken challenger only goes unused; before a start it is a problem.
        try:
            with load_rules(config.rules.challenger, Router.of(config).attribute_types()) as other:
                challenger = f", challenger {len(other.rules)} rules (version {other.version})"
        except RuleLoadError as exc:
            problems.extend(exc.errors)
    try:
        load_master_key(config.auth.master_key_file, environ)
    except MasterKeyError as exc:
        problems.append(f"{where(('auth', 'master_key_file'))}: {exc}")
    problems.extend(_decision_log(config, where))
    for line in problems:
        print(f"txgate: {line}", file=err)
    if problems:
        return 1
    for note in _notes(config, environ):
        print(f"note: {note}", file=out)
    print(f"{path or '(defaults)'}: OK: {len(config.routes)} routes, {count} rules "
          f"(version {version}){challenger}", file=out)
    return 0


class _Where:
    """``FILE:LINE`` of a key path, or of the nearest key the file has."""

    def __init__(self, path: str | None):
        self._path = path
        self._data = load_yaml(Path(path).read_text(encoding="utf-8"))[0] if path else None

    def __call__(self, loc: tuple) -> str:
        if self._path is None:
            return "(defaults)"
        return f"{self._path}:{key_line(self._data, loc)}"


def _decision_log(config: Config, where: _Where) -> list[str]:
    if not config.decision_log.path:
        return []
    directory = Path(config.decision_log.path).parent
    here = where(("decision_log", "path"))
    if not directory.is_dir():
        return [f"{here}: decision_log.path: directory {directory} does not exist "
                "(txgate does not create it)"]
    if not os.access(directory, os.W_OK | os.X_OK):
        return [f"{here}: decision_log.path: directory {directory} is not writable"]
    return []


def _notes(config: Config, environ) -> list[str]:
    notes = []
    if not config.routes:
        notes.append("no routes: every request will be answered 404 no_route")
    if not environ.get("TXGATE_ADMIN_TOKEN"):
        notes.append("TXGATE_ADMIN_TOKEN is not set: the admin API (/admin/*) refuses every call")
    return notes
