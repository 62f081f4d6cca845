"""docs/protocol.md says what the code does, where that can be read off the code.

The metrics table against the families declared in metrics/ (names, types, labels, and the label
values the code fixes), the error table against every request error raised in gateway/ and
auth/, the decision-log table against the fields gateway/record.py writes; and the repository
cites only itself.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

import metrics.definitions as definitions
from metrics.identity import BuildInfo, expiring_keys_registry

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text()
_ERROR_CLASSES = {"GatewayError", "AuthError", "RequestError"}


def _section(title: str) -> str:
    """The text of the ``## `` section whose heading contains ``title``."""
    match = re.search(rf"^## [^\n]*{re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"docs/protocol.md has no section {title!r}"
    return match.group(1)


def _rows(text: str) -> list[list[str]]:
    """The cells of every table row of ``text`` (header and rule lines excluded)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"[|\-: ]+", line):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            if cells and cells[0].startswith("`"):
                rows.append(cells)
    return rows


# -- metrics --------------------------------------------------------------------------------

def _code_metrics() -> dict[str, tuple[str, set[str]]]:
    """Exposed family name -> (type, labels) of every metric the code declares."""
    found = {}
    for value in vars(definitions).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            found[name] = (value._type, set(value._labelnames))
    scraped = [*BuildInfo("0", lambda: None).collect(),
               *expiring_keys_registry({"shop": 1}).collect()]
    for family in scraped:
        found[family.name] = (family.type, {k for s in family.samples for k in s.labels})
    return found


def _doc_metrics() -> dict[str, tuple[str, str]]:
    """Name -> (type cell, labels cell) of the metrics table."""
    return {cells[0].strip("`"): (cells[1], cells[2]) for cells in _rows(_section("Metrics"))}


def _doc_labels(cell: str) -> set[str]:
    # Label names are the backticked words; parentheses and dashes hold their values and notes.
    return set(re.findall(r"`(\w+)`", cell))


def _doc_values(cell: str, label: str) -> set[str]:
    match = re.search(rf"`{label}` \(([^)]*)\)", cell)
    assert match, f"the metrics table lists no values of {label}: {cell}"
    return {value.strip() for value in match.group(1).split(",")}


def test_every_metric_family_is_in_the_table_with_its_labels():
    code, doc = _code_metrics(), _doc_metrics()
    assert set(doc) == set(code), (f"missing from the doc: {sorted(set(code) - set(doc))}; "
                                   f"not in the code: {sorted(set(doc) - set(code))}")
    for name, (kind, labels) in code.items():
        doc_type, doc_labels = doc[name]
        assert doc_type.startswith(kind), f"{name}: the code says {kind}, the doc {doc_type}"
        assert _doc_labels(doc_labels) == labels, f"{name}: the code's labels are {sorted(labels)}"


def _source(*packages: str) -> dict[Path, str]:
    return {path: path.read_text() for package in packages
            for path in sorted((ROOT / package).rglob("*.py"))}


def test_label_values_the_code_fixes_are_the_ones_listed():
    auth_reasons = {reason for text in _source("auth", "gateway").values()
                    for reason in re.findall(r'invalid_signature\("(\w+)"\)', text)}
    operations = {op for text in _source("state").values()
                  for op in re.findall(r'\b_(?:command|script|call|direct)\("(\w+)"', text)}
    fixed = {
        ("txgate_requests_total", "decision"): set(definitions.DECISIONS),
        ("txgate_stepup_total", "method"): set(definitions.STEPUP_METHODS),
        ("txgate_stepup_total", "outcome"): set(definitions.STEPUP_OUTCOMES),
        ("txgate_upstream_errors_total", "kind"): set(definitions.UPSTREAM_ERROR_KINDS),
        ("txgate_rules_reloads_total", "outcome"): set(definitions.RELOAD_OUTCOMES),
        ("txgate_decision_log_errors_total", "sink"): set(definitions.DECISION_LOG_SINKS),
        ("txgate_auth_failures_total", "reason"): auth_reasons,
        ("txgate_state_errors_total", "operation"): operations,
    }
    assert auth_reasons and operations   # the patterns still find the code's calls
    doc = _doc_metrics()
    for (name, label), values in fixed.items():
        assert _doc_values(doc[name][1], label) == values, f"{name}{{{label}}}: {sorted(values)}"


# -- errors ---------------------------------------------------------------------------------

def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _error_classes(trees) -> set[str]:
    """The request error classes and every subclass of them, by name."""
    classes = {c.name: {getattr(b, "id", None) for b in c.bases}
               for tree in trees for c in ast.walk(tree) if isinstance(c, ast.ClassDef)}
    found = set(_ERROR_CLASSES)
    while grown := {name for name, bases in classes.items() if bases & found} - found:
        found |= grown
    return found


def _is_super_init(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "__init__" and isinstance(f.value, ast.Call)
            and getattr(f.value.func, "id", None) == "super")


def _raised_errors() -> set[tuple[int, str]]:
    """(status, code) of every request error constructed in gateway/ and auth/: calls of the
    error classes, and ``super().__init__`` in their subclasses. A code held in a variable is
    read off the assignments to that variable in the same function."""
    trees = [ast.parse(text, str(path)) for path, text in _source("gateway", "auth").items()]
    classes = _error_classes(trees)
    found = set()
    for tree in trees:
        subclasses = [c for c in ast.walk(tree)
                      if isinstance(c, ast.ClassDef) and c.name in classes]
        scopes = [(tree, False), *((c, True) for c in subclasses)]
        for scope, in_error_class in scopes:
            for func in ast.walk(scope):
                if not isinstance(func, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for call in ast.walk(func):
                    if not isinstance(call, ast.Call) or len(call.args) < 2:
                        continue
                    named = isinstance(call.func, ast.Name) and call.func.id in classes
                    if not (named or (in_error_class and _is_super_init(call))):
                        continue
                    status, code = call.args[0], call.args[1]
                    if not isinstance(status, ast.Constant) or not isinstance(status.value, int):
                        continue   # a base class passing its own parameters on
                    if isinstance(code, ast.Constant):
                        found.add((status.value, code.value))
                    elif isinstance(code, ast.Name):
                        for assign in ast.walk(func):
                            if isinstance(assign, ast.Assign) and any(
                                    getattr(t, "id", None) == code.id for t in assign.targets):
                                found |= {(status.value, s) for s in _strings(assign.value)}
    return found


def test_every_error_code_raised_is_in_the_table_with_its_status():
    raised = _raised_errors()
    codes = {code for _, code in raised}
    # A few that must be found, or the collector no longer reads the code.
    assert {"invalid_request", "invalid_signature", "otp_reused", "state_unavailable",
            "insufficient_user_authentication", "upstream_timeout", "client_closed"} <= codes
    table = {}
    for line in _section("HTTP protocol").splitlines():
        match = re.match(r"\| (\d{3}) \| `(\w+)` \|", line)
        if match:
            table[match.group(2)] = int(match.group(1))
    assert set(table) == codes, (f"missing from the errors table: {sorted(codes - set(table))}; "
                                 f"raised nowhere: {sorted(set(table) - codes)}")
    for status, code in raised:
        assert table[code] == status, f"{code}: the code answers {status}, the doc {table[code]}"


# -- decision log ---------------------------------------------------------------------------

def _record_fields() -> tuple[set[str], set[str]]:
    """(top-level fields, fields of one rules[] entry) that gateway/record.py writes."""
    tree = ast.parse((ROOT / "gateway" / "record.py").read_text())
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}

    def keys(func) -> set[str]:
        out = set()
        for node in ast.walk(func):
            if isinstance(node, ast.Dict):
                out |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.slice, ast.Constant):
                out.add(node.slice.value)
        return out

    return keys(funcs["_entry"]), keys(funcs["_hit"])


def test_every_decision_log_field_is_in_the_table():
    fields, hit_fields = _record_fields()
    assert {"ts", "request_id", "decision", "degraded", "normalized", "error"} <= fields
    section = _section("Decision log")
    rows = {cells[0].strip("`"): cells for cells in _rows(section)}
    assert set(rows) == fields, (f"missing from the doc: {sorted(fields - set(rows))}; "
                                 f"not written: {sorted(set(rows) - fields)}")
    assert hit_fields <= set(re.findall(r"`(\w+)`", rows["rules"][2])), hit_fields


# -- the repository stands alone ------------------------------------------------------------

# Built from parts, so that this file does not match itself.
_OUTSIDE = ("../" + "shared", "interface" + " §", "interface" + ".md")
_SKIP = {".git", ".venv", "vendor", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist"}


def test_no_file_points_outside_the_repository():
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder, name)
            text = path.read_bytes().decode("utf-8", "replace")
            for number, line in enumerate(text.splitlines(), 1):
                if any(needle in line for needle in _OUTSIDE):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
