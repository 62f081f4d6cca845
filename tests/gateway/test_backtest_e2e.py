"""Backtesting with outcomes on a log a real gateway wrote: one transaction per step-up, labels
joined on the ids the upstream received, and every number of the report worked out by hand."""

from __future__ import annotations

import json
import subprocess
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.processes import TXGATE, Gateway
from tests.fixtures.signing import SignedClient
from tests.gateway.test_stepup_e2e import oathtool

LOGGED = """
version: 1
rules:
  - {id: T-OTP, description: mid-size, when: amount >= 100 and amount < 1000, action: require_otp}
  - {id: T-DENY, description: huge, when: amount >= 5000, action: deny}
"""
CANDIDATE = """
version: 1
rules:
  - {id: T-OTP, description: mid-size, when: amount >= 100 and amount < 1000, action: require_otp}
  - {id: T-DENY, description: lower limit, when: amount >= 250, action: deny}
  - {id: C-NEW, description: the odd twenty, when: amount == 20, action: require_otp}
"""
TX = {"user_id": "json:$.user_id", "amount": "json:$.amount", "currency": "json:$.currency",
      "payee": "json:$.payee"}


@pytest.fixture(scope="module")
def traffic(tmp_path_factory, upstream):
    """tx1..tx6 and a pending step-up, through a real gateway; {name: [request ids]}."""
    tmp = tmp_path_factory.mktemp("backtest")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "r.yaml").write_text(LOGGED)
    (tmp / "candidate").mkdir()
    (tmp / "candidate" / "r.yaml").write_text(CANDIDATE)
    gw = Gateway(tmp, {
        "rules": {"path": str(tmp / "rules"), "reload": "off"},
        "auth": {"totp": {"max_failures": 3, "lockout_s": 60}, "challenge_ttl_s": 1},
        "routes": [{"name": "payments", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": TX}]})
    try:
        client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"])
        secrets = {}
        for user in ("alice", "bob"):
            uri = gw.admin_post(f"/admin/totp/{user}").json()["otpauth_uri"]
            secrets[user] = parse_qs(urlsplit(uri).query)["secret"][0]

        def pay(user, amount, headers=None):
            r = client.request("POST", f"{gw.url}/pay", headers=headers or {},
                               json={"user_id": user, "amount": amount, "currency": "EUR", "payee": "P1"})
            return r, r.headers["Txgate-Request-Id"] if "Txgate-Request-Id" in r.headers else r.json()["request_id"]

        ids = {}
        r, ids["tx1"] = pay("alice", 50)
        assert r.status_code == 200
        r, first = pay("alice", 150)   # step-up, answered: passed
        r2, repeat = pay("alice", 150, {"Txgate-Challenge": r.json()["challenge"],
                                        "Txgate-OTP": oathtool(secrets["alice"])})
        assert r2.status_code == 200, r2.text
        ids["tx2"] = [first, repeat]
        r, ids["tx3"] = pay("alice", 200)   # step-up never answered: abandoned
        assert r.status_code == 401
        r, first = pay("bob", 300)   # three wrong codes: locked, failed
        ids["tx4"] = [first]
        challenge = r.json()["challenge"]
        for expected in (401, 401, 423):
            r, rid = pay("bob", 300, {"Txgate-Challenge": challenge, "Txgate-OTP": "000000"})
            assert r.status_code == expected, r.text
            challenge = r.json().get("challenge", challenge)
            ids["tx4"].append(rid)
        r, ids["tx5"] = pay("carol", 6000)
        assert r.status_code == 403
        r, ids["tx6"] = pay("carol", 20)
        assert r.status_code == 200
        time.sleep(1.2)   # tx3's challenge (challenge_ttl_s: 1) expires before the log ends
        r, ids["dave"] = pay("dave", 10)
        r, ids["pending"] = pay("alice", 160)   # the log ends while it can still be answered
        assert r.status_code == 401
    finally:
        gw.stop()
    return {"tmp": tmp, "log": gw.decision_log, "config": gw.config_path, "ids": ids}


def replay(traffic, *args) -> subprocess.CompletedProcess:
    return subprocess.run([TXGATE, "rules", "replay", "--log", str(traffic["log"]),
                           "--rules", str(traffic["tmp"] / "candidate"),
                           "--config", str(traffic["config"]), *args],
                          capture_output=True, text=True, timeout=120)


def write_labels(traffic, text: str, name="labels.csv"):
    path = traffic["tmp"] / name
    path.write_text(text)
    return str(path)


def test_the_log_links_a_step_up_its_answers_and_its_lockout(traffic):
    records = [r for r in map(json.loads, traffic["log"].read_text().splitlines())
               if r.get("type") != "audit"]   # credential changes share the sink
    by_id = {r["request_id"]: r for r in records}
    ids = traffic["ids"]
    assert len(records) == 12
    for name in ("tx2", "tx4"):
        assert len({by_id[i]["event_id"] for i in ids[name]}) == 1
    assert by_id[ids["tx4"][-1]]["error"] == "user_locked"
    assert len({r["event_id"] for r in records}) == 8


def test_outcomes_by_hand(traffic):
    ids = traffic["ids"]
    labels = write_labels(traffic, (
        "request_id,label,reported_at,amount,note\n"
        f"{ids['tx1']},genuine,,,\n"
        f"{ids['tx2'][1]},genuine,2026-01-02T00:00:00Z,,upstream id of the repeat\n"
        f"{ids['tx3']},fraud,,,\n"
        f"{ids['tx4'][0]},fraud,,310.5,label amount wins\n"
        f"{ids['tx5']},fraud,,,\n"
        f"{ids['tx6']},fraud,,,\n"
        "not-a-logged-id,fraud,,,\n"))
    result = replay(traffic, "--labels", labels, "--json", "--changes")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["records"] == 12 and doc["transactions"] == 8
    assert doc["labels"] == {"fraud": 4, "genuine": 2, "matured_genuine": 0, "left_out": 2,
                             "not_in_log": 1, "duplicate_transaction": 0, "reported_after_as_of": 0}
    # Logged: stopped tx2 tx3 tx4 tx5 (+ the pending one, unlabelled); fraud tx3 tx4 tx5 tx6
    # = 200 + 310.5 + 6000 + 20 = 6530.5, of which 6510.5 stopped; genuine tx1 tx2, tx2 stopped.
    logged = doc["sets"]["logged"]
    assert logged == {"stopped": 5, "fraud": 4, "fraud_amount": 6530.5, "fraud_stopped": 3,
                      "fraud_amount_stopped": 6510.5, "genuine": 2, "genuine_amount": 200.0,
                      "genuine_stopped": 1, "genuine_amount_stopped": 150.0, "genuine_denied": 0,
                      "genuine_stepped_up": 1, "precision": 0.75, "recall": 0.75,
                      "recall_amount": round(6510.5 / 6530.5, 4)}
    # Candidate: tx4 (300) denied, tx6 (20) stepped up: every fraud stopped.
    candidate = doc["sets"]["candidate"]
    assert (candidate["stopped"], candidate["fraud_stopped"], candidate["genuine_stopped"]) == (6, 4, 1)
    assert (candidate["precision"], candidate["recall"], candidate["recall_amount"]) == (0.8, 1.0, 1.0)
    rules = {r["id"]: r for r in doc["rules"]}
    assert rules["T-OTP"]["logged"] == {
        "hits": 4, "tp": 2, "fp": 1, "precision": round(2 / 3, 4), "recall": 0.5,
        "recall_amount": round(510.5 / 6530.5, 4), "fraud_amount": 510.5, "genuine_amount": 150.0}
    assert rules["T-OTP"]["step_up"] == {"passed": 1, "failed": 1, "abandoned": 1, "pending": 1}
    assert rules["T-DENY"]["logged"]["tp"] == 1 and rules["T-DENY"]["candidate"]["tp"] == 2
    assert rules["T-DENY"]["candidate"]["recall_amount"] == round(6310.5 / 6530.5, 4)
    assert rules["C-NEW"]["logged"]["hits"] == 0 and rules["C-NEW"]["candidate"]["tp"] == 1
    assert doc["step_up"] == {"passed": 1, "failed": 1, "abandoned": 1, "pending": 1}
    assert doc["changed"] == [{"from": "allow", "to": "require_otp", "count": 1},
                              {"from": "require_otp", "to": "deny", "count": 1}]
    changes = {c["request_id"]: c for c in doc["changes"]}
    assert changes[ids["tx4"][0]] == {"request_id": ids["tx4"][0], "line": changes[ids["tx4"][0]]["line"],
                                      "user_id": "bob", "amount": 300.0, "from": "require_otp",
                                      "to": "deny", "from_set_by": "rule T-OTP",
                                      "to_set_by": "rule T-DENY", "added": ["T-DENY"], "removed": []}
    assert changes[ids["tx6"]]["added"] == ["C-NEW"]


def test_mature_after_counts_old_unlabelled_transactions_as_genuine(traffic):
    ids = traffic["ids"]
    labels = write_labels(traffic, json.dumps({"request_id": ids["tx3"], "label": "fraud"}) + "\n",
                          "labels.jsonl")
    doc = json.loads(replay(traffic, "--labels", labels, "--json", "--mature-after", "0").stdout)
    # As of the log's last record every other transaction is "old enough" at 0 days.
    assert doc["labels"]["fraud"] == 1 and doc["labels"]["matured_genuine"] == 7
    assert doc["sets"]["logged"]["genuine_stopped"] == 4   # tx2, tx4, tx5, the pending one
    young = json.loads(replay(traffic, "--labels", labels, "--json", "--mature-after", "30").stdout)
    assert young["labels"]["matured_genuine"] == 0 and young["labels"]["left_out"] == 7
    assert young["sets"]["logged"]["precision"] == 1.0


def test_text_report_and_changes(traffic):
    result = replay(traffic, "--changes")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("replayed 8 transactions from 12 records")
    assert "2 decisions change" in out
    assert "step-ups (logged): 1 passed, 1 failed, 1 abandoned, 1 pending" in out
    assert any(line.split() == ["T-OTP", "4", "4", "+0", "1", "1", "1", "1"] for line in out.splitlines())
    assert (f"  {traffic['ids']['tx6']}  user=carol  amount=20  allow (score 0 < review 50) -> "
            "require_otp (rule C-NEW)  +C-NEW") in out


def test_bad_label_rows_fail_with_file_and_line_unless_skipped(traffic):
    ids = traffic["ids"]
    labels = write_labels(traffic, (
        "request_id,label,amount\n"
        f"{ids['tx3']},fraud,\n"
        f"{ids['tx5']},stolen,\n"
        f"{ids['tx6']},fraud,-3\n"
        f"{ids['tx3']},genuine,\n"), "bad.csv")
    result = replay(traffic, "--labels", labels)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{labels}:3: label 'stolen' is not fraud or genuine",
        f"{labels}:4: amount '-3' is not a finite number >= 0",
        f"{labels}:5: request_id {ids['tx3']!r} is already labelled at line 2",
        "3 bad label rows: fix them or pass --skip-bad-labels"]
    skipped = replay(traffic, "--labels", labels, "--skip-bad-labels", "--json")
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["labels"]["fraud"] == 1
    assert f"{labels}:3: label 'stolen'" in skipped.stderr


def test_a_broken_pipe_ends_quietly(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(CANDIDATE)
    log = tmp_path / "big.jsonl"
    log.write_text("".join(json.dumps({"request_id": f"r{i}", "route": "payments", "decision": "allow",
                                       "rules": [], "features": {"amount": 20}}) + "\n"
                           for i in range(5000)))
    proc = subprocess.Popen([TXGATE, "rules", "replay", "--log", str(log), "--rules", str(rules),
                             "--changes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"replayed 5000 transactions")
    proc.stdout.close()
    assert proc.wait(60) == 141
    assert proc.stderr.read() == b""


def explain(traffic, request_id, *args) -> subprocess.CompletedProcess:
    return subprocess.run([TXGATE, "explain", request_id, "--log", str(traffic["log"]),
                           "--config", str(traffic["config"]), *args],
                          capture_output=True, text=True, timeout=60)


def test_explain_a_step_up_answered_then_under_the_candidate(traffic):
    ids = traffic["ids"]
    result = explain(traffic, ids["tx4"][0], "--rules", str(traffic["tmp"] / "candidate"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Line numbers in the log file, which also holds the credential audit lines.
    line = {json.loads(text).get("request_id"): n
            for n, text in enumerate(traffic["log"].read_text().splitlines(), 1)}
    first, last = line[ids["tx4"][0]], line[ids["tx4"][3]]
    assert out.startswith(f"request {ids['tx4'][0]} ({traffic['log']}:{first})")
    assert "one transaction, event " in out and ": 4 records" in out
    assert f"    line {last}: {ids['tx4'][3]} tier client -> step_up (user_locked)" in out
    assert f"  * line {first}: " in out
    assert "  amount = 300\n" in out and '  user_id = "bob"\n' in out
    assert "logged decision: step_up (action require_otp, score 0.0)" in out
    assert "  set by: rule T-OTP" in out
    assert "    when: amount >= 250   [" in out and "    read: amount = 300" in out
    assert out.rstrip().endswith("  set by: rule T-DENY")
    assert ": deny (score 0)" in out


def test_explain_under_the_configured_rules_and_unknown_ids(traffic):
    ids = traffic["ids"]
    result = explain(traffic, ids["tx1"])
    assert result.returncode == 0, result.stderr
    assert "(the logged rules were" not in result.stdout   # the configured set logged it
    assert "one transaction" not in result.stdout
    assert result.stdout.rstrip().endswith(
        "set by: score 0 < review 50")
    missing = explain(traffic, "nope")
    assert missing.returncode == 1 and missing.stderr == f"{traffic['log']}: no record with request_id nope\n"


def test_html_report_is_one_offline_page(traffic):
    ids = traffic["ids"]
    labels = write_labels(traffic, f"request_id,label\n{ids['tx3']},fraud\n{ids['tx1']},genuine\n", "few.csv")
    page = traffic["tmp"] / "report.html"
    result = replay(traffic, "--labels", labels, "--html", str(page))
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    from plotly.offline import get_plotlyjs
    assert get_plotlyjs() in text                       # the library inlined, once
    page_only = text.replace(get_plotlyjs(), "")
    assert "src=" not in page_only and "http" not in page_only   # nothing else to fetch
    for title in ("Precision and recall per rule", "Candidate risk score: fraud vs genuine",
                  "Decisions: logged (rows)", "<td>T-OTP</td>", "<td>C-NEW</td>"):
        assert title in text
    assert "8 transactions from 12 records" in text
