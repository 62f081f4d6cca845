"""Process logs: JSON lines for machines, text for people, one record per event.

Off a terminal (systemd, containers, files) each record is one JSON object on one line with
``time``, ``level``, ``logger``, ``pid``, ``message``, ``request_id`` when the record belongs
to a request, the record's ``extra`` fields, and ``exc`` (the traceback as one string) so that
an exception never spans lines. On a terminal the same records are plain text.

The request id is a context variable set by the pipeline for the request's duration, so any
module logging while a request runs tags its record without passing the id around.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import sys

import orjson

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("txgate_request_id",
                                                                       default=None)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _time(record: logging.LogRecord) -> str:
    stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    request_id = REQUEST_ID.get()
    if request_id is not None:
        fields.setdefault("request_id", request_id)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _time(record), "level": record.levelname, "logger": record.name,
                 "pid": record.process, "message": record.getMessage(), **_fields(record)}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (f"{_time(record)} {record.levelname} {record.name} [{record.process}] "
                f"{record.getMessage()}{' ' + extra if extra else ''}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str | None, default: str = "INFO", stream=None) -> None:
    """Configure the root logger once per process: ``level`` (else TXGATE_LOG_LEVEL, else
    ``default``); JSON unless ``stream`` is a terminal."""
    stream = stream or sys.stderr
    name = (level or os.environ.get("TXGATE_LOG_LEVEL") or default).upper()
    if name not in LEVELS:
        raise ValueError(f"log level {name!r}: expected one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if stream.isatty() else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(name)
    # Python's warnings print raw lines to stderr: as records they stay one JSON line each.
    logging.captureWarnings(True)
