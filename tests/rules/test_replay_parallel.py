"""A large log is decided by several processes in byte ranges: the report must be the one a
single pass gives, line numbers and step-ups that straddle a range boundary included."""
import functools
import json

from rules import load_rules
from rules import replay as replay_module
from rules.replay import replay_file

RULES = "rules:\n  - {id: R-OTP, when: amount >= 100, action: require_otp}\n  - {id: R-BIG, when: amount >= 900, action: deny}\n"


def test_workers_give_the_single_pass_report(write, tmp_path, monkeypatch):
    rules = write(r__yaml=RULES)
    lines = []
    for i in range(400):
        amount = (i * 37) % 1000
        record = {"ts": 1000.0 + i, "request_id": f"r{i}", "event_id": f"e{i}", "route": "payments",
                  "decision": "step_up" if amount >= 100 else "allow",
                  "action": "require_otp" if amount >= 100 else "allow",
                  "rules": [{"id": "R-OTP", "mode": "enforce", "action": "require_otp"}] if amount >= 100 else [],
                  "features": {"amount": amount}, "transaction": {"amount": amount}}
        lines.append(json.dumps(record))
        if amount >= 100 and i % 3 == 0:   # its answered repeat, a few records later
            lines.append(json.dumps({**record, "request_id": f"r{i}b", "decision": "allow",
                                     "ts": 1000.5 + i, "tier": "otp"}))
        if i % 97 == 0:
            lines += ["not json", "", "[1]"]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(lines) + "\n")
    with load_rules(rules) as rs:
        single = replay_file(log, rs)
        monkeypatch.setattr(replay_module, "_PARALLEL_BYTES", 0)
        split = replay_file(log, rs, load=functools.partial(load_rules, rules), workers=2)
    assert single.records == split.records == len([line for line in lines if line])
    assert split.skipped == single.skipped and len(single.skipped) == 10
    assert [(t.line, t.request_ids, t.before, t.after, t.after_hits, t.answered, t.ended)
            for t in split.transactions] == [
           (t.line, t.request_ids, t.before, t.after, t.after_hits, t.answered, t.ended)
           for t in single.transactions]
    assert sum(t.ended == "passed" for t in single.transactions) > 30
    assert split.attributes == single.attributes and split.last_ts == single.last_ts


def test_audit_records_are_not_decisions(write, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"type": "audit", "event": "client_added", "client_id": "shop"}) + "\n"
                   + json.dumps({"request_id": "r1", "route": "payments", "decision": "allow",
                                 "features": {"amount": 950}}) + "\n")
    with load_rules(write(r__yaml=RULES)) as rs:
        report = replay_file(log, rs)
    assert report.records == 1 and report.skipped == [] and report.transactions[0].after == "deny"
