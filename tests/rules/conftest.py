import textwrap

import pytest

from rules import load_rules

TYPES = {"user_id": "string", "amount": "number", "currency": "string", "payee": "string",
         "device_id": "string", "country": "string", "flag": "boolean", "n": "integer",
         "a": "number", "b": "number", "c": "number", "s": "string"}


@pytest.fixture
def write(tmp_path):
    """Write FILE -> text into a fresh rules directory and return the directory."""
    def _write(**files):
        for name, text in files.items():
            (tmp_path / name.replace("__", ".")).write_text(textwrap.dedent(text))
        return tmp_path
    return _write


@pytest.fixture
def ruleset(tmp_path):
    """Load one rule per `when` (ids R0, R1, ...) with score 1 each."""
    made = []

    def _make(*whens, types=TYPES, lists=None, extra=""):
        body = "version: 1\n"
        if lists:
            body += "lists:\n" + "".join(f"  {k}: {v!r}\n" for k, v in lists.items())
        body += "rules:\n" + "".join(
            f"  - id: R{i}\n    when: {w!r}\n    score: 1\n" for i, w in enumerate(whens))
        (tmp_path / "r.yaml").write_text(body + extra)
        rs = load_rules(tmp_path, types)
        made.append(rs)
        return rs
    yield _make
    for rs in made:
        rs.close()


def fired(rs, attrs, route="payments"):
    return {h.rule for h in rs.decide(attrs, route).hits}
