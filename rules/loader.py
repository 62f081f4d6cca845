"""Rule directory -> RuleSet, strictly: every error of a load, each as FILE:LINE: message.

Like envoy's ratelimit config: parse and validate everything first, build the engine last, so
a bad file never produces a half-built rule set (the gateway keeps the running one).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
from pathlib import Path

from rules.compiler import FALSE, TRUE, CompileError, compile_expr, key
from rules.counters import CounterSpec, counter_from_dict
from rules.decision import ACTIONS, DEFAULT_THRESHOLDS
from rules.engine import EngineError, meaning, refusal
from rules.expressions import ExpressionError, LiveList, Matches, expr_attrs, parse_when, walk
from rules.kinds import BUILTINS, TYPE_KIND, KindChecker
from rules.ruleset import Rule, RuleSet
from rules.yamlsrc import LineDict, line_of, load_yaml

TOP_KEYS = {"version", "lists", "counters", "thresholds", "rules"}
RULE_KEYS = {"id", "description", "when", "action", "score", "mode", "tags", "routes"}
COUNTER_KEYS = {"name", "key", "window", "aggregate", "field", "on", "reset_on", "scope", "where"}
MODES = ("enforce", "shadow")
_RULE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
# The engine refuses facts with more than 255 properties; leave room for sid, id and the guard.
MAX_ATTRIBUTES = 200


class RuleLoadError(Exception):
    """Every problem of one load, each formatted FILE:LINE: message."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def rule_files(path: Path) -> list[Path]:
    """The rule files of a directory (tests excluded), or the file itself."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir()
                  if p.suffix in (".yaml", ".yml") and not p.stem.endswith("_test") and p.is_file())


def case_files(path: Path) -> list[Path]:
    base = path if path.is_dir() else path.parent
    return sorted(p for p in base.iterdir() if p.is_file() and p.name.endswith(("_test.yaml", "_test.yml")))


class _Load:
    def __init__(self, attribute_types: dict[str, str] | None):
        self.errors: list[tuple[str, int, str]] = []
        self.types = attribute_types
        self.lists: dict[str, tuple | LiveList] = {}
        # Live-list reads of the rules: attribute name -> (tested attribute, list name).
        self.memberships: dict[str, tuple[str, str]] = {}
        self.counters: list[tuple[CounterSpec, str, int]] = []
        self.where_lines: dict[str, int] = {}   # counter name -> line of its where:
        self.thresholds: dict[str, float] | None = None
        self.raw_rules: list[tuple[LineDict, str]] = []

    def err(self, file: str, line: int, msg: str) -> None:
        self.errors.append((file, line, msg))

    def read_file(self, file: str, text: str) -> None:
        data, problems = load_yaml(text)
        for line, msg in problems:
            self.err(file, line, msg)
        if data is None:
            return
        if not isinstance(data, LineDict):
            self.err(file, line_of(data), "a rule file is a mapping with lists, counters, thresholds and rules")
            return
        for k in data:
            if k not in TOP_KEYS:
                self.err(file, line_of(data, k), f"unknown key {k!r} (expected one of {', '.join(sorted(TOP_KEYS))})")
        if "version" in data and data["version"] != 1:
            self.err(file, line_of(data, "version"), "version must be 1")
        self.read_lists(file, data.get("lists"), line_of(data, "lists"))
        self.read_counters(file, data.get("counters"), line_of(data, "counters"))
        self.read_thresholds(file, data, line_of(data, "thresholds"))
        rules = data.get("rules")
        if rules is None:
            return
        if not isinstance(rules, list):
            self.err(file, line_of(data, "rules"), "rules must be a list")
            return
        for item, line in zip(rules, rules.item_lines):
            if isinstance(item, LineDict):
                self.raw_rules.append((item, file))
            else:
                self.err(file, line, "each rule is a mapping with id, when and action or score")

    def read_lists(self, file: str, lists, line: int) -> None:
        if lists is None:
            return
        if not isinstance(lists, LineDict):
            self.err(file, line, "lists must be a mapping of NAME: [values] or NAME: {store: redis}")
            return
        for name, values in lists.items():
            ln = line_of(lists, name)
            if not isinstance(name, str) or not name.isidentifier():
                self.err(file, ln, f"list name {name!r} is not an identifier")
            elif name in self.lists:
                self.err(file, ln, f"list {name!r} is declared twice")
            elif isinstance(values, dict):
                if dict(values) != {"store": "redis"}:
                    self.err(file, ln, f"list {name!r}: a live list is declared {{store: redis}} "
                                       "(its members are managed with txgate lists or /admin/lists)")
                else:
                    self.lists[name] = LiveList(name)
            elif not isinstance(values, list) or not all(
                    isinstance(v, (str, bool)) or (isinstance(v, (int, float)) and math.isfinite(v)) for v in values):
                self.err(file, ln, f"list {name!r} must be a list of strings, numbers or booleans")
            else:
                self.lists[name] = tuple(values)

    def read_counters(self, file: str, counters, line: int) -> None:
        if counters is None:
            return
        if not isinstance(counters, list):
            self.err(file, line, "counters must be a list")
            return
        for item, ln in zip(counters, counters.item_lines):
            if not isinstance(item, LineDict):
                self.err(file, ln, "a counter is a mapping {name, key, aggregate, ...}")
                continue
            unknown = [k for k in item if k not in COUNTER_KEYS]
            for k in unknown:
                self.err(file, line_of(item, k), f"unknown counter key {k!r}")
            try:
                spec = counter_from_dict(item)
            except ValueError as e:
                self.err(file, ln, str(e))
                continue
            if any(c.name == spec.name for c, _, _ in self.counters):
                self.err(file, ln, f"counter {spec.name!r} is declared twice")
                continue
            self.counters.append((spec, file, ln))
            if spec.where is not None:
                self.where_lines[spec.name] = line_of(item, "where", ln)

    def read_thresholds(self, file: str, data: LineDict, line: int) -> None:
        if "thresholds" not in data:
            return
        th = data["thresholds"]
        if self.thresholds is not None:
            self.err(file, line, "thresholds are declared in more than one file")
            return
        if not isinstance(th, LineDict):
            self.err(file, line, "thresholds must be a mapping ACTION: SCORE")
            return
        out = {}
        for action, value in th.items():
            ln = line_of(th, action)
            if action not in ACTIONS or action == "allow":
                self.err(file, ln, f"threshold for {action!r}: not an action above allow ({', '.join(ACTIONS[1:])})")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.err(file, ln, f"threshold for {action}: must be a number")
            else:
                out[action] = float(value)
        self.thresholds = out


def load_rules(path, attribute_types: dict[str, str] | None = None) -> RuleSet:
    """Load, validate and compile every rule file under `path`; raise RuleLoadError with all errors."""
    path = Path(path)
    if not path.exists():
        raise RuleLoadError([f"{path}:1: no such file or directory"])
    files = rule_files(path)
    load = _Load(attribute_types)
    digest = hashlib.sha256()
    for f in files:
        raw = f.read_bytes()
        digest.update(f.name.encode() + b"\0" + raw + b"\0")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            load.err(str(f), 1, "file is not UTF-8")
            continue
        load.read_file(str(f), text)
    if attribute_types is not None:
        for name, t in attribute_types.items():
            if t not in TYPE_KIND:
                load.err(str(path), 1, f"attribute type {t!r} of {name!r} is not one of {', '.join(TYPE_KIND)}")
    return _build(load, digest.hexdigest()[:12])


def _build(load: _Load, version: str) -> RuleSet:
    types = load.types or {}
    known = {**{k: TYPE_KIND.get(v, "string") for k, v in types.items()}, **BUILTINS}
    features: dict[str, CounterSpec] = {}
    for spec, file, line in load.counters:
        if spec.feature in known:
            load.err(file, line, f"counter feature {spec.feature!r} clashes with an attribute of that name")
        known_inputs = set(types) | set(BUILTINS)
        if load.types is not None:
            for a in spec.key + ((spec.field,) if spec.field else ()):
                if a not in known_inputs:
                    load.err(file, line, f"counter {spec.name}: unknown attribute {a!r}")
        if spec.aggregate == "sum" and types.get(spec.field) in ("string", "boolean"):
            load.err(file, line, f"counter {spec.name}: sum needs a numeric field, {spec.field!r} is a {types[spec.field]}")
        features[spec.feature] = spec
    for f in features:
        known[f] = "number"
    live_names = {n for n, v in load.lists.items() if isinstance(v, LiveList)}
    first_seen_names = {s.name: s.feature for s in features.values() if s.aggregate == "first_seen"}

    checker = KindChecker(known)
    load.counters = [(_with_where(load, spec, file, set(features) | set(first_seen_names), checker),
                      file, line) for spec, file, line in load.counters]
    parsed = []
    seen_ids: dict[str, tuple[str, int]] = {}
    for item, file in load.raw_rules:
        rule = _read_rule(load, item, file, seen_ids)
        if rule is None:
            continue
        fields, expr, when_line = rule
        for name in sorted(expr_attrs(expr)):
            if name in load.memberships:
                tested, list_name = load.memberships[name]
                if name in types or name in features or name in BUILTINS:
                    load.err(file, when_line, f"'{tested} in lists.{list_name}' is read as the attribute "
                                              f"{name!r}, which is already an attribute or counter")
                elif load.types is not None and tested not in known:
                    load.err(file, when_line, f"unknown attribute {tested!r}: not a transaction field or built-in")
                # Live lists hold strings: the tested attribute is a string.
                checker.require(tested, "string", (file, when_line), "a live list needs")
                checker.require(name, "boolean", (file, when_line), "a live-list test is")
            elif name in first_seen_names:
                load.err(file, when_line, f"counter {name!r} is first_seen: rules read '{first_seen_names[name]}'")
            elif load.types is not None and name not in known:
                load.err(file, when_line, f"unknown attribute {name!r}: not a transaction field, built-in or counter")
        checker.visit(expr, (file, when_line))
        parsed.append((fields, expr, file, when_line))
    kinds = checker.finish()
    for (file, line), msg in checker.errors:
        load.err(file, line, msg)

    rules = []
    attribute_names: set[str] = set()
    for fields, expr, file, when_line in parsed:
        try:
            cond = compile_expr(expr)
        except CompileError as e:
            load.err(file, when_line, str(e))
            continue
        if cond is FALSE:
            load.err(file, when_line, "this condition can never be true")
            continue
        refused = _refused_regexes(expr)
        if refused:
            load.err(file, when_line, refused)
            continue
        if fields["routes"]:
            # Route filters are compiled into the condition: filtered rules never fire at all.
            route_cond = {"$or": [{key("route"): r} for r in fields["routes"]]} if len(fields["routes"]) > 1 \
                else {key("route"): fields["routes"][0]}
            cond = route_cond if cond is TRUE else {"$and": [route_cond, cond]}
        elif cond is TRUE:
            cond = {"$ex": {key("route"): 1}}    # route is in every fact: "always"
        attribute_names |= expr_attrs(expr)
        rules.append(Rule(expr=expr, condition=cond, file=file, **fields))
    if len(attribute_names) > MAX_ATTRIBUTES:
        load.err("rules", 1, f"rules read {len(attribute_names)} attributes; at most {MAX_ATTRIBUTES} are supported")

    if load.errors:
        raise RuleLoadError([f"{f}:{ln}: {m}" for f, ln, m in sorted(load.errors, key=lambda e: (e[0], e[1]))])
    thresholds = dict(DEFAULT_THRESHOLDS) if load.thresholds is None else load.thresholds
    used_lists = {name: load.memberships[name] for name in sorted(attribute_names) if name in load.memberships}
    try:
        return RuleSet(version=version, rules=tuple(rules), counters=tuple(s for s, _, _ in load.counters),
                       memberships=tuple((name, tested, list_name) for name, (tested, list_name) in used_lists.items()),
                       live_lists=tuple(sorted(live_names)),
                       lists=dict(load.lists), thresholds=thresholds,
                       kinds={k: v for k, v in kinds.items() if k in attribute_names or k == "route"},
                       attribute_names=frozenset(attribute_names))
    except EngineError as exc:
        raise RuleLoadError(_engine_refusals(rules, exc)) from None


def _engine_refusals(rules: list[Rule], exc: Exception) -> list[str]:
    """FILE:LINE of every rule the engine refuses on its own. Probed one by one only once the
    whole set was refused, so a set the engine takes pays nothing for it."""
    refused = [f"{rule.file}:{rule.line}: rule {rule.id}: {why}; split it into smaller rules"
               for rule in rules if (why := refusal(rule.condition)) is not None]
    return refused or [f"{rules[0].file if rules else 'rules'}:1: the engine refused the rule set "
                       f"({meaning(exc)})"]


def unchecked_attributes(rs: RuleSet) -> dict[str, str | None]:
    """Without attribute types (no config), the names rules and counters read that could only be
    transaction fields, unchecked: name -> the built-in or counter it is close to (a likely
    typo: `user_tx_1hh` -> `user_tx_1h`), else None."""
    known = set(BUILTINS) | {c.feature for c in rs.counters}
    read = set(rs.attribute_names) | {a for c in rs.counters
                                      for a in c.key + ((c.field,) if c.field else ())}
    return {name: next(iter(difflib.get_close_matches(name, sorted(known), 1, 0.8)), None)
            for name in sorted(read - known)}
def _with_where(load: _Load, spec: CounterSpec, file: str, counter_names: set[str],
                checker: KindChecker) -> CounterSpec:
    """The spec with its ``where:`` parsed and checked once; errors name the where's line."""
    if spec.where is None:
        return spec
    line = load.where_lines[spec.name]
    read_lists: dict[str, tuple[str, str]] = {}
    try:
        expr = parse_when(spec.where, load.lists, read_lists)
    except ExpressionError as e:
        load.err(file, line, f"counter {spec.name}: bad where: {e}")
        return spec
    for name in sorted(expr_attrs(expr)):
        if name in read_lists:
            load.err(file, line, f"counter {spec.name}: where reads live list {read_lists[name][1]!r}; "
                                 "a where reads static lists only (live members are read with the counters)")
        elif name in counter_names:
            load.err(file, line, f"counter {spec.name}: where reads counter {name!r}; a where reads "
                                 "transaction attributes and built-ins only (counters are not known yet "
                                 "when it is decided what to count)")
        elif load.types is not None and name not in set(load.types) | set(BUILTINS):
            load.err(file, line, f"counter {spec.name}: where reads unknown attribute {name!r}")
    checker.visit(expr, (file, line))
    return dataclasses.replace(spec, where_expr=expr)


_regex_verdicts: dict[str, str | None] = {}


def _refused_regexes(expr) -> str | None:
    """Probe each regex in the engine once per process: some valid patterns still fail to build."""
    for node in walk(expr):
        if isinstance(node, Matches):
            pattern = node.regex.engine
            if pattern not in _regex_verdicts:
                _regex_verdicts[pattern] = refusal({"$mt": {"v_probe": pattern}})
            if _regex_verdicts[pattern]:
                return (f"the engine cannot build regex {node.regex.source!r} ({_regex_verdicts[pattern]}); "
                        "simplify it, e.g. avoid a repeated [^x] followed by x")
    return None


def _read_rule(load: _Load, item: LineDict, file: str, seen_ids: dict):
    """Validate a rule mapping; return (Rule fields, IR, line of when) or None after recording errors."""
    ok = True
    line = item.line

    def bad(k, msg):
        nonlocal ok
        ok = False
        load.err(file, line_of(item, k, line), msg)

    for k in item:
        if k not in RULE_KEYS:
            bad(k, f"unknown rule key {k!r} (expected one of {', '.join(sorted(RULE_KEYS))})")
    rid = item.get("id")
    if not isinstance(rid, str) or not _RULE_ID.match(rid):
        bad("id", "rule needs an id like VEL-001 (letters, digits, - _ .)")
        rid = None
    elif rid in seen_ids:
        f0, l0 = seen_ids[rid]
        bad("id", f"duplicate rule id {rid!r} (first at {f0}:{l0})")
    else:
        seen_ids[rid] = (file, line)
    description = item.get("description", "")
    if not isinstance(description, str):
        bad("description", "description must be a string")
    action, score = item.get("action"), item.get("score")
    if ("action" in item) == ("score" in item):
        bad("action" if "action" in item else "id", "a rule has exactly one of action: or score:")
    elif "action" in item and action not in ACTIONS:
        bad("action", f"action {action!r} is not one of {', '.join(ACTIONS)}")
    elif "score" in item and (isinstance(score, bool) or not isinstance(score, (int, float))
                              or not math.isfinite(score)):
        bad("score", "score must be a number")
    mode = item.get("mode", "enforce")
    if mode not in MODES:
        bad("mode", "mode must be enforce or shadow")
    tags = item.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        bad("tags", "tags must be a list of strings")
    routes = item.get("routes", [])
    if not isinstance(routes, list) or not routes and "routes" in item or not all(isinstance(r, str) for r in routes):
        bad("routes", "routes must be a non-empty list of route names")
    when_line = line_of(item, "when", line)
    expr = None
    if "when" not in item:
        bad("id", "rule needs when:")
    else:
        try:
            expr = parse_when(item["when"], load.lists, load.memberships)
        except ExpressionError as e:
            bad("when", f"bad when: {e}")
    if not ok:
        return None
    fields = dict(id=rid, description=description, when=item["when"].strip(),
                  action=action if "action" in item else None,
                  score=float(score) if "score" in item else None, mode=mode, tags=tuple(tags),
                  routes=tuple(routes), line=line)
    return fields, expr, when_line
