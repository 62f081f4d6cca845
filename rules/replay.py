"""Re-decide logged transactions under candidate rules: what would change before it ships.

One transaction is one unit: the decision log gives a step-up challenge, the repeats that answer
it and a lockout on the way the same ``event_id``, so they are read as one transaction, decided
as its first record was (the repeat is re-decided at a higher tier, which is not a new decision
about the payment). The later records tell how the step-up ended (``step_up_outcome``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import contextlib
import gc
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor

import orjson

from rules.expressions import expr_attrs
from rules.ruleset import RuleSet

_STEP_UP = ("require_otp", "require_device")
STOPPED = frozenset({"deny", "step_up", *_STEP_UP})
STEP_UP_OUTCOMES = ("passed", "failed", "abandoned", "pending")
# Answers that end a step-up without the transaction going through.
_FAILED = frozenset({"user_locked", "too_many_attempts", "enrollment_required"})


@dataclass(slots=True)
class Transaction:
    line: int
    ts: float | None
    request_ids: list[str]
    user_id: object
    amount: float | None
    route: str
    before: str                      # the logged action
    before_hits: tuple[str, ...]
    before_score: float | None
    before_set_by: str | None        # the logged set_by (None in records older than it)
    after: str                       # the candidate's action
    after_hits: tuple[str, ...]
    after_score: float
    after_set_by: str
    stepped_up: bool                 # the logged decision asked for a step-up
    last_ts: float | None = None     # the last record of the transaction
    answered: bool = False           # a later record answered the challenge
    ended: str | None = None         # "passed" | "failed" once a record says so

    @property
    def changed(self) -> bool:
        return not (self.after == self.before
                    or (self.before == "step_up" and self.after in _STEP_UP))

    def step_up_outcome(self, log_end: float | None, challenge_ttl_s: float) -> str | None:
        """passed, failed (wrong answers, a lockout, nothing to answer with), abandoned (the
        challenge expired unanswered), pending (still answerable when the log ends)."""
        if not self.stepped_up:
            return None
        if self.ended:
            return self.ended
        expired = (log_end is not None and self.last_ts is not None
                   and log_end - self.last_ts >= challenge_ttl_s)
        if not expired:
            return "pending"
        return "failed" if self.answered else "abandoned"


@dataclass
class ReplayReport:
    records: int = 0
    skipped: list[str] = field(default_factory=list)     # "LINE: why"
    transactions: list[Transaction] = field(default_factory=list)
    by_request: dict = field(default_factory=dict)        # request id -> Transaction
    versions: Counter = field(default_factory=Counter)
    attributes: set = field(default_factory=set)           # every feature name replayed
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def compared(self) -> int:
        return len(self.transactions)


def logged_action(record: dict) -> str | None:
    """The rule action a record was decided with: its `action`, else its gateway decision name."""
    action = record.get("action")
    if isinstance(action, str):
        return action
    decision = record.get("decision")
    return decision if isinstance(decision, str) and decision != "error" else None


def replay_lines(lines, rs: RuleSet, counters=None) -> ReplayReport:
    """Decide each transaction's first JSONL record under `rs`; link its later records.

    ``counters`` (gateway.backtest.RecomputedCounters) recomputes the counter features of
    every record instead of reading the logged ones: records then go in time order, and each
    one is decided (a step-up repeat too) so the counters learn what became of it.
    """
    report = ReplayReport()
    seen: list[int] = []
    if counters is None:
        records = _records(lines, report.skipped, seen)
    else:
        records = _in_time_order(lines, report.skipped, seen)
    _link((digest(n, record, rs, report.attributes, counters) for n, record in records), report)
    report.records = len(seen)
    return report


def _in_time_order(lines, skipped: list[str], kept: list[int]):
    """`_records` sorted by time (stably; a record without a numeric ts first). The lines are
    kept and each parsed when its turn comes: a million records parsed and held in memory to
    be sorted cost 17 µs a record, against 7 for the lines (docs/performance.md)."""
    lines = lines if isinstance(lines, list) else list(lines)
    times = [_time(line) for line in lines]
    for i in sorted(range(len(lines)), key=times.__getitem__):
        record = _record(i + 1, lines[i], skipped, kept)
        if record is not None:
            yield i + 1, record
    skipped.sort(key=lambda why: int(why.split(":", 1)[0]))   # in the order of the lines


# The gateway writes a record's time first ({"ts":1767225600.123,...}): read alone, the number
# orders the line for a fifth of the cost of parsing it. Only where no other string in the line
# can be "ts" (parsing keeps the last of duplicate keys): the text "ts" appears once, and no
# \u escape could spell it otherwise.
_LEADING_TS = re.compile(rb'\{"ts":([-+.0-9eE]+)[,}]')


def _time(line: bytes) -> float | int:
    """A line's record time for ordering: its numeric ts, else 0.0 (no record, or no ts)."""
    found = _LEADING_TS.match(line)
    if found is not None and line.count(b'"ts"') == 1 and b"\\u" not in line:
        try:
            ts = orjson.loads(found[1])   # the number as parsing the whole line gives it
        except orjson.JSONDecodeError:
            pass
        else:
            return ts if type(ts) in _NUMBERS else 0.0
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return 0.0
    ts = record.get("ts") if isinstance(record, dict) else None
    return ts if type(ts) in _NUMBERS else 0.0


def replay_file(path, rs: RuleSet, counters=None, load=None, workers: int = 1) -> ReplayReport:
    """`replay_lines` over a file; without ``counters``, a large file is decided by ``workers``
    processes, each with the rule set ``load()`` returns (the same files), in byte ranges."""
    size = os.path.getsize(path)
    if counters is not None or load is None or workers < 2 or size < _PARALLEL_BYTES:
        with open(path, "rb") as fh:
            return replay_lines(fh, rs, counters)
    report = ReplayReport()
    step = -(-size // (workers * 16))   # small ranges: the last to finish leaves a core idle briefly
    ranges = [(str(path), start, min(start + step, size)) for start in range(0, size, step)]
    offset = 0
    # fork: a worker starts in milliseconds and builds its own engine ruleset (the parent's,
    # inherited, is never used there); replay runs no threads that a fork could cut.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(load,)) as pool:
        def rows():
            nonlocal offset
            for lines, records, skipped, digested, names in pool.map(_digest_range, ranges):
                report.records += records
                report.skipped.extend(f"{int(n) + offset}: {why}" for n, why in skipped)
                report.attributes.update(names)
                for row in digested:
                    yield (row[0] + offset,) + row[1:]
                offset += lines
        _link(rows(), report)
    report.skipped.sort(key=lambda why: int(why.split(":", 1)[0]))   # as one pass lists them
    return report


@contextlib.contextmanager
def without_gc():
    """The cycle collector off while a replay runs: it keeps millions of containers (parsed
    records, transactions, counter values) that form no cycles, and the collector's passes
    over them cost as much as deciding (55 of 157 µs a record with --recompute). Worker
    processes forked meanwhile inherit it off. Anything cyclic made meanwhile is collected
    once it is back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_PARALLEL_BYTES = 64 << 20   # below ~70,000 records, starting the workers costs more than it saves
_worker_rules: RuleSet | None = None


def _start_worker(load) -> None:
    global _worker_rules
    _worker_rules = load()


def _digest_range(task):
    """(lines read, records, [(line, why)], rows, attribute names) of the lines starting in
    [start, end) of the file; line numbers count from the range's first line."""
    path, start, end = task
    skipped: list[str] = []
    names: set = set()
    with open(path, "rb") as fh:
        fh.seek(max(start - 1, 0))
        if start:
            fh.readline()   # the end of the line the previous range owns
        lines = []
        while fh.tell() < end:
            line = fh.readline()
            if not line:
                break
            lines.append(line)
    records = []
    rows = [digest(n, record, _worker_rules, names) for n, record in _records(lines, skipped, records)]
    return (len(lines), len(records), [tuple(s.split(": ", 1)) for s in skipped], rows, names)


def digest(n: int, record: dict, rs: RuleSet, names: set, counters=None) -> tuple:
    """One record as replay links it, decided under `rs`: a flat tuple (cheap between
    processes). Its last member is why it cannot be decided (None when it was)."""
    ts = record.get("ts")
    ts = float(ts) if type(ts) in _NUMBERS else None
    event, request_id = record.get("event_id"), record.get("request_id")
    before = logged_action(record)
    route, features = record.get("route"), record.get("features")
    after, why = None, None
    if before is None or not isinstance(route, str) or not isinstance(features, dict):
        why = "no decision, route or features"
    else:
        try:
            if counters is not None:
                features = counters.features(record)   # ValueError: a ts in another unit
            after = rs.decide(features, route)
        except ValueError as e:
            why = str(e)
        else:
            names.update(features)
            if counters is not None:
                counters.settle(record, after)
    transaction = record.get("transaction")
    amount = transaction.get("amount") if isinstance(transaction, dict) else None
    score, set_by = record.get("score"), record.get("set_by")
    logged_hits = record.get("rules")
    return (n, ts, event if isinstance(event, str) else None,
            request_id if isinstance(request_id, str) else None, record.get("user_id"),
            float(amount) if type(amount) in _NUMBERS else None, route, before,
            tuple(h["id"] for h in logged_hits
                  if isinstance(h, dict) and isinstance(h.get("id"), str)) if logged_hits else (),
            score if type(score) in _NUMBERS else None, set_by if isinstance(set_by, str) else None,
            record.get("decision"), record.get("error"), str(record.get("rules_version", "?")),
            after.action if after else None,
            tuple(h.rule for h in after.hits) if after and after.hits else (),
            after.score if after else 0.0, after.set_by if after else None, why)


def _link(rows, report: ReplayReport) -> None:
    """Group digested records into transactions: a record whose event is open follows it."""
    open_events: dict[str, Transaction] = {}
    for (n, ts, event, request_id, user_id, amount, route, before, before_hits, score, set_by,
         decision, error, version, after, after_hits, after_score, after_set_by, why) in rows:
        if ts is not None:
            report.first_ts = ts if report.first_ts is None else min(report.first_ts, ts)
            report.last_ts = ts if report.last_ts is None else max(report.last_ts, ts)
        tx = open_events.get(event) if event is not None else None
        if tx is not None:
            _follow(tx, request_id, decision, error, ts, report)
            continue
        if why is not None:
            report.skipped.append(f"{n}: {why}")
            continue
        tx = Transaction(
            line=n, ts=ts, request_ids=[request_id] if request_id else [], user_id=user_id,
            amount=amount, route=route, before=before, before_hits=before_hits,
            before_score=score, before_set_by=set_by, after=after, after_hits=after_hits,
            after_score=after_score, after_set_by=after_set_by,
            stepped_up=decision == "step_up", last_ts=ts)
        if tx.stepped_up and error in _FAILED:
            tx.ended = "failed"   # locked, or nothing enrolled: no challenge to answer
        report.transactions.append(tx)
        report.versions[version] += 1
        if request_id:
            report.by_request[request_id] = tx
        if event is not None:
            open_events[event] = tx


def _records(lines, skipped: list[str], kept: list[int]):
    """(line number, record) of every JSON object line; the others go to `skipped`.
    ``kept`` gets the number of every non-blank line, to count them."""
    for n, line in enumerate(lines, 1):
        record = _record(n, line, skipped, kept)
        if record is not None:
            yield n, record


def _record(n: int, line: bytes, skipped: list[str], kept: list[int]) -> dict | None:
    """Line ``n``'s record, or None (blank, an audit line, or skipped: why goes to `skipped`)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        if not line.strip():
            return None
        record, why = None, f"not JSON ({str(e).split(':')[0]})"
    else:
        why = None if isinstance(record, dict) else "not a JSON object"
    if why is None and record.get("type") == "audit":
        return None   # a credential change the gateway logs beside its decisions: no record
    kept.append(n)
    if why is not None:
        skipped.append(f"{n}: {why}")
    return record if why is None else None


# The number types JSON gives (orjson makes exact ints and floats; bools are not numbers).
_NUMBERS = frozenset({int, float})


def unread_attributes(report: ReplayReport, rs: RuleSet) -> dict[str, list[str]]:
    """rule id -> the attributes it reads that no replayed record carries (route aside)."""
    missing = {}
    for rule in rs.rules:
        absent = sorted(expr_attrs(rule.expr) - report.attributes - {"route"})
        if absent:
            missing[rule.id] = absent
    return missing


def _follow(tx: Transaction, request_id: str | None, decision, error, ts: float | None,
            report: ReplayReport) -> None:
    """A later record of the same transaction: an answer to its challenge."""
    if request_id:
        tx.request_ids.append(request_id)
        report.by_request[request_id] = tx
    if ts is not None:
        tx.last_ts = ts
    tx.answered = True
    if tx.ended == "passed":
        return
    if decision in ("allow", "review"):
        tx.ended = "passed"
    elif decision == "deny" or error in _FAILED:
        tx.ended = "failed"
