"""With --recompute a log is replayed in time order: stably sorted by ts, a record without a
numeric ts first, whatever the line looks like (the leading ts read alone where that is exact,
the whole line parsed where it is not), with skipped lines reported in the order of the file."""
import json

import orjson

from gateway.backtest import RecomputedCounters
from rules import load_rules
from rules.replay import _time, replay_lines

RULES = ("counters:\n  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}\n"
         "rules:\n  - {id: R-OTP, when: amount >= 100, action: require_otp}\n")


def record(i, ts, **extra):
    body = {"ts": ts} if ts is not ... else {}
    body.update({"request_id": f"r{i}", "event_id": f"e{i}", "route": "payments",
                 "decision": "allow", "action": "allow", "user_id": "u1",
                 "features": {"amount": 5, "user_id": "u1"}, **extra})
    return json.dumps(body, separators=(",", ":"))


def test_recompute_replays_in_time_order_and_reports_skips_in_file_order(write):
    lines = [
        record(1, 30.0),
        "not json",
        record(2, 10),                                                  # an int time
        record(3, 20.0, features={"amount": 5, "user_id": "u1", "ts": 99}),   # another ts key: parsed
        json.dumps({"route": "payments", "ts": 5.0, "request_id": "r4", "event_id": "e4",
                    "decision": "allow", "action": "allow",
                    "features": {"amount": 5, "user_id": "u1"}}),        # ts not first
        record(5, "late"),                                              # not a number: first
        "",
        json.dumps({"type": "audit", "ts": 1.0, "event": "client_added"}),
        "[1]",
        record(6, 20.0),                                                # a tie keeps file order
        record(7, ...),                                                 # no ts: first
        record(8, 15.5, note='a,"ts":1'),                               # "ts": inside a string
        record(9, 1.0)[:-1] + ',"ts" :40.0}',                            # a second ts: the last counts
        record(10, 2.0)[:-1] + r',"t\u0073":35.0}',                      # ... spelled with an escape
        record(11, 1e16),                                               # ms, not s: skipped
    ]
    with load_rules(write(r__yaml=RULES)) as rs:
        report = replay_lines([(line + "\n").encode() for line in lines], rs,
                              RecomputedCounters(rs, 300, settle_s=5.0))
    assert [t.request_ids[0] for t in report.transactions] == [
        "r5", "r7", "r4", "r2", "r8", "r3", "r6", "r1", "r10", "r9"]
    assert report.skipped == ["2: not JSON (invalid literal, expected 'null')", "9: not a JSON object",
                              "15: ts 1e+16 is not a Unix time in seconds"]
    assert report.records == 13


def test_a_leading_ts_is_read_as_parsing_the_line_reads_it():
    for text in ("1767225600.123", "17", "-0.5", "1e3", "1E-3", "12345678901234567890", "0.1e400", "99999999999999999999",
                 '"x"', "true", "null", "1.", "--1", "+1"):
        line = ('{"ts":%s,"a":1}' % text).encode()
        try:
            whole = orjson.loads(line)["ts"]
        except orjson.JSONDecodeError:
            whole = None
        expected = whole if type(whole) in (int, float) else 0.0
        assert _time(line) == expected and type(_time(line)) is type(expected), text
