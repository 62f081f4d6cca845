"""Outcome labels for replay: which logged transactions turned out fraud, which genuine.

A labels file is CSV (a header row naming the columns) or JSONL (one object a line), one row
per labelled transaction: ``request_id`` (as the upstream received it in Txgate-Request-Id),
``label`` (``fraud`` or ``genuine``), optional ``reported_at`` (ISO 8601) and ``amount``.
Other columns are ignored, so a platform's own export can be used as it is.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LABELS = ("fraud", "genuine")


@dataclass(frozen=True, slots=True)
class Label:
    label: str                   # "fraud" | "genuine"
    reported_at: float | None    # epoch seconds
    amount: float | None


def read_labels(path) -> tuple[dict[str, Label], list[str]]:
    """request_id -> Label, and the bad rows as ``FILE:LINE: message`` (those rows left out)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    jsonl = path.suffix in (".jsonl", ".ndjson", ".json") or (
        path.suffix != ".csv" and text.lstrip().startswith("{"))
    rows = _jsonl_rows(text) if jsonl else _csv_rows(text)
    labels: dict[str, Label] = {}
    first_line: dict[str, int] = {}
    errors: list[str] = []
    for line, row in rows:
        try:
            if isinstance(row, str):
                raise ValueError(row)
            request_id, label = _row(row)
        except ValueError as e:
            errors.append(f"{path}:{line}: {e}")
            continue
        if request_id in labels:
            errors.append(f"{path}:{line}: request_id {request_id!r} is already labelled "
                          f"at line {first_line[request_id]}")
            continue
        labels[request_id], first_line[request_id] = label, line
    return labels, errors


def _csv_rows(text: str):
    reader = csv.DictReader(text.splitlines(keepends=True))
    missing = [c for c in ("request_id", "label") if c not in (reader.fieldnames or ())]
    if missing:
        yield 1, f"the header row has no {' and no '.join(missing)} column"
        return
    for row in reader:
        if None in row:
            yield reader.line_num, "more fields than the header names"
        elif any(v.strip() for v in row.values() if v):
            yield reader.line_num, {k: v.strip() if v is not None else "" for k, v in row.items()}


def _jsonl_rows(text: str):
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, f"not JSON ({e.msg})"
            continue
        yield n, row if isinstance(row, dict) else "not a JSON object"


def _row(row: dict) -> tuple[str, Label]:
    request_id = row.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise ValueError("request_id is missing or not a string")
    label = row.get("label")
    if label not in LABELS:
        raise ValueError(f"label {label!r} is not fraud or genuine")
    return request_id, Label(label, parse_time(row.get("reported_at"), "reported_at"), _amount(row.get("amount")))


def parse_time(value, name: str) -> float | None:
    """An ISO 8601 text as epoch seconds (UTC when it has no offset); None when empty."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} {value!r} is not an ISO 8601 text")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not ISO 8601 (e.g. 2026-03-01T12:00:00Z)") from None
    if when.tzinfo is None:   # a date or time without an offset is taken as UTC
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _amount(value) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise ValueError(f"amount {value!r} is not a number")
    try:
        amount = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"amount {value!r} is not a number") from None
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"amount {value!r} is not a finite number >= 0")
    return amount
