"""Log records: one JSON line off a terminal (exceptions included), text on a terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings

import pytest

from gateway import logs


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield
    logging.captureWarnings(False)
    root.handlers[:], root.level = handlers, level


def test_json_lines_carry_the_request_id_extras_and_the_exception(restore_root):
    out = io.StringIO()
    logs.setup("info", stream=out)
    log = logging.getLogger("txgate.test")
    token = logs.REQUEST_ID.set("r-123")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("it failed", extra={"event": "x", "route": "pay"})
    finally:
        logs.REQUEST_ID.reset(token)
    warnings.warn("old API", DeprecationWarning, stacklevel=1)   # a warning is a record too
    log.debug("below the level")
    log.warning("no request")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, warned, second = map(json.loads, lines)
    assert warned["logger"] == "py.warnings" and "old API" in warned["message"]
    assert first["message"] == "it failed" and first["level"] == "ERROR"
    assert first["logger"] == "txgate.test" and first["pid"] == os.getpid()
    assert first["request_id"] == "r-123" and first["event"] == "x" and first["route"] == "pay"
    assert "RuntimeError: boom\nsecond line" in first["exc"] and "Traceback" in first["exc"]
    assert "request_id" not in second


def test_a_terminal_gets_text(restore_root):
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as tty:
        logs.setup(None, default="WARNING", stream=tty)
        logging.getLogger("txgate.test").info("hidden")
        logging.getLogger("txgate.test").warning("shown", extra={"event": "y"})
        tty.flush()
        text = os.read(leader, 4096).decode()
    os.close(leader)
    assert "hidden" not in text
    assert f" WARNING txgate.test [{os.getpid()}] shown event=y" in text
    assert not text.lstrip().startswith("{")


def test_the_level_comes_from_the_environment_and_is_checked(restore_root, monkeypatch):
    monkeypatch.setenv("TXGATE_LOG_LEVEL", "error")
    logs.setup(None, stream=io.StringIO())
    assert logging.getLogger().level == logging.ERROR
    monkeypatch.setenv("TXGATE_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="expected one of DEBUG"):
        logs.setup(None, stream=io.StringIO())
