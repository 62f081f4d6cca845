"""Scenarios run through the gateway's extractor, counters, step-up sequence and settle."""
import io
import textwrap

import pytest

from gateway.config import parse_config
from gateway.scenario_runner import ScenarioRunner
from rules.commands import run_tests

RULES = """\
counters:
  - {name: tx_1h,   key: [user_id], window: 1h, aggregate: count}
  - {name: paid_24h, key: [user_id], window: 24h, aggregate: sum, field: amount, on: allow}
  - {name: user_payee, key: [user_id, payee], aggregate: first_seen, on: allow}
  - {name: since_sca, key: [user_id], reset_on: strong_auth, aggregate: sum, field: amount, on: allow}
rules:
  - {id: BURST, when: tx_1h > 3, action: deny}
  - {id: NEWPAYEE, when: amount >= 100 and not exists(user_payee_age_s), action: require_otp}
  - {id: VOLUME, when: amount + paid_24h > 1000, action: require_device}
  - {id: SCA, when: amount <= 30 and amount + since_sca > 50, action: require_otp}
  - {id: BLOCKED, when: 'country == "KP"', action: deny}
  - {id: NODEVICE, when: not exists(device_id), score: 10}
"""
ROUTE = {"name": "payments", "match": {"path": "/v1/payments", "methods": ["POST"]},
         "upstream": "http://127.0.0.1:9000",
         "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount",
                         "currency": "json:$.currency", "payee": "json:$.payee.iban",
                         "country": {"from": "json:$.payee.country", "required": False},
                         "device_id": {"from": "header:X-Device-Id", "required": False}}}


def run(tmp_path, scenarios: str, config=None) -> tuple[int, str, str]:
    (tmp_path / "r.yaml").write_text(RULES)
    (tmp_path / "r_test.yaml").write_text(textwrap.dedent(scenarios))
    out, err = io.StringIO(), io.StringIO()
    code = run_tests(tmp_path, out=out, err=err, scenario_runner=ScenarioRunner(config))
    return code, out.getvalue(), err.getvalue()


def passes(tmp_path, scenarios: str, config=None) -> None:
    code, out, err = run(tmp_path, scenarios, config)
    assert code == 0, out + err


def test_attempts_count_and_a_denied_or_unanswered_request_leaves_no_allow_counts(tmp_path):
    passes(tmp_path, """\
        - name: the first payment to a payee is new, refused ones do not make it known
          transaction: {user_id: u1, currency: EUR, payee: P1, amount: 100, device_id: d1}
          steps:
            - {at: +0s, expect: {action: require_otp, rules: [NEWPAYEE], outcome: step_up}}
            - {at: +1m, transaction: {country: KP}, expect: {rules: [NEWPAYEE, BLOCKED], outcome: deny}}
            - {at: +2m, expect: {rules: [NEWPAYEE], not_rules: [BURST], outcome: step_up}}
            - {at: +3m, expect: {action: deny, rules: [BURST], set_by: rule BURST, outcome: deny}}
            - {at: +2h, passed: otp, expect: {rules: [NEWPAYEE], outcome: allow, tier: otp}}
            - {at: +3h, expect: {not_rules: [NEWPAYEE], outcome: allow, tier: client}}
        """)


def test_a_passed_step_up_counts_its_amount_and_resets_the_strong_auth_counters(tmp_path):
    passes(tmp_path, """\
        - name: volume and the amount since the last strong authentication
          transaction: {user_id: u1, currency: EUR, payee: P1, device_id: d1}
          steps:
            - {at: +0s, transaction: {amount: 30}, expect: {action: allow, outcome: allow}}
            - {at: +1h, transaction: {amount: 30}, expect: {rules: [SCA], outcome: step_up}}
            - {at: +2h, transaction: {amount: 20}, expect: {not_rules: [SCA], outcome: allow}}
            - {at: +3h, transaction: {amount: 30}, passed: otp, expect: {rules: [SCA], outcome: allow, tier: otp}}
            - {at: +4h, transaction: {amount: 30}, expect: {not_rules: [SCA], outcome: allow}}
            - {at: +5h, transaction: {amount: 890}, expect: {not_rules: [VOLUME], outcome: allow}}
            - {at: +5h, transaction: {amount: 891}, expect: {rules: [VOLUME], outcome: step_up}}
            - {at: +6h, transaction: {amount: 891}, passed: otp, expect: {rules: [VOLUME], outcome: step_up, tier: client}}
            - {at: +7h, transaction: {amount: 891}, passed: device, expect: {action: require_device, outcome: allow, tier: device}}
            - {at: +8h, transaction: {amount: 30}, expect: {not_rules: [SCA], rules: [VOLUME]}}
            - {at: +32h, transaction: {amount: 30}, expect: {not_rules: [VOLUME, SCA], outcome: allow}}
        """)


def test_repeat_checks_its_last_request_and_failures_name_the_step(tmp_path):
    code, out, _ = run(tmp_path, """\
        - name: four attempts in an hour
          transaction: {user_id: u1, currency: EUR, payee: P1, amount: 1, device_id: d1}
          steps:
            - {at: +0s, repeat: 3, every: 1m, expect: {not_rules: [BURST]}}
            - {at: +10m, repeat: 2, every: 1m, expect: {not_rules: [BURST]}}
        """)
    assert code == 1
    assert f"FAIL scenario {tmp_path / 'r_test.yaml'}:1: four attempts in an hour" in out
    assert f"    step {tmp_path / 'r_test.yaml'}:5 (repeat 2): expected rules not to match: BURST" in out
    assert "    matched: BURST; action deny, score 0; outcome deny" in out


def test_pending_scenarios_are_reported_and_fail_once_they_pass(tmp_path):
    code, out, _ = run(tmp_path, """\
        - name: waits for something
          pending: not built yet
          steps: [{transaction: {user_id: u1, amount: 1}, expect: {rules: [BURST]}}]
        - name: passes already
          pending: stale
          steps: [{transaction: {user_id: u1, amount: 1}, expect: {not_rules: [BURST]}}]
        """)
    assert code == 1
    assert f"PENDING scenario {tmp_path / 'r_test.yaml'}:1: waits for something (not built yet)" in out
    assert "passes now: remove `pending: stale`" in out
    assert out.splitlines()[-2] == "cases: 0 passed, 0 failed; scenarios: 0 passed, 1 failed, 1 pending"


def test_scenario_errors_name_file_and_line(tmp_path):
    code, out, err = run(tmp_path, """\
        - name: bad
          steps:
            - {at: +1h, transaction: {user_id: u1}}
            - {at: +5m, transaction: {user_id: u1}}
            - {at: 5m, passed: totp, repeat: 0, expect: {outcome: maybe, tier: root, action: deny, bogus: 1}}
          start: yesterday
        - {name: empty, steps: []}
        """)
    f = tmp_path / "r_test.yaml"
    assert code == 1
    for line in (f"{f}:4: at +5m is before the previous step",
                 f"{f}:5: at '5m' is not + then numbers with s, m, h or d (e.g. +5m, +1d2h)",
                 f"{f}:5: passed must be otp or device",
                 f"{f}:5: repeat must be a whole number from 1 to 1000",
                 f"{f}:5: outcome 'maybe' is not one of allow, review, step_up, deny, error",
                 f"{f}:5: tier 'root' is not one of client, otp, device",
                 f"{f}:5: unknown expect key 'bogus'",
                 f"{f}:6: start 'yesterday' is not a UTC time like 2026-01-05T12:00:00Z",
                 f"{f}:7: steps must be a non-empty list"):
        assert line in err.splitlines(), err
    assert out.splitlines()[-1] == "0 passed, 9 failed"


@pytest.fixture
def config():
    return parse_config({"routes": [ROUTE]}, {})


def test_with_a_config_steps_go_through_the_routes_extractor(tmp_path, config):
    passes(tmp_path, """\
        - name: fields from the body and headers, typed and checked as for a live request
          transaction: {user_id: u1, currency: EUR, payee: P1, device_id: d1}
          steps:
            - {at: +0s, transaction: {amount: 20, device_id: null}, expect: {rules: [NODEVICE], score: 10}}
            - {at: +0s, transaction: {amount: 20}, expect: {not_rules: [NODEVICE], outcome: allow}}
            - {at: +0s, transaction: {amount: 20, country: KP}, expect: {rules: [BLOCKED]}}
            - {at: +0s, transaction: {amount: 20.123}, expect: {outcome: error}}
        """, config)
    code, out, _ = run(tmp_path, """\
        - name: refused
          steps:
            - {transaction: {user_id: u1, amount: 1, currency: EUR, payee: P1, colour: red}}
        - name: bad currency
          steps:
            - {transaction: {user_id: u1, amount: 1, currency: euro, payee: P1}}
        - name: no such route
          route: loans
          steps: [{transaction: {user_id: u1}}]
        """, config)
    assert code == 1
    assert "transaction refused: colour: not a field of route payments" in out
    assert "transaction refused: currency: expected an ISO 4217 currency code" in out
    assert "route 'loans' is not a route with a transaction block in the config" in out


def test_config_only_scenarios_are_skipped_without_a_config(tmp_path, config):
    scenario = """\
        - name: through the route only
          config_only: true
          steps: [{transaction: {user_id: u1, amount: 1, currency: EUR, payee: P1}, expect: {outcome: allow}}]
        """
    code, out, _ = run(tmp_path, scenario)
    assert code == 1   # nothing passed
    assert f"SKIPPED scenario {tmp_path / 'r_test.yaml'}:1: through the route only (needs --config)" in out
    assert out.splitlines()[-2] == "cases: 0 passed, 0 failed; scenarios: 0 passed, 0 failed, 0 pending, 1 skipped"
    passes(tmp_path, scenario, config)


def test_min_tier_of_the_route_applies(tmp_path):
    config = parse_config({"routes": [{**ROUTE, "min_tier": "otp"}]}, {})
    passes(tmp_path, """\
        - name: every request of the route is strongly authenticated
          transaction: {user_id: u1, currency: EUR, payee: P1, device_id: d1, amount: 1}
          steps:
            - {at: +0s, expect: {action: allow, outcome: step_up}}
            - {at: +0s, passed: otp, expect: {action: allow, outcome: allow, tier: otp}}
        """, config)


CLOCK_RULES = """\
rules:
  - {id: NIGHT, when: hour < 5, score: 1}
  - {id: WEEKEND, when: weekday >= 5, score: 1}
  - {id: MONDAY, when: weekday == 0, score: 1}
"""


@pytest.mark.parametrize("zone, night, weekend", [
    # 2026-01-05T03:00Z is Monday 03:00 in UTC, Monday 04:00 in Berlin and Sunday 22:00 in New York.
    (None, True, False), ("UTC", True, False), ("Europe/Berlin", True, False),
    ("America/New_York", False, True)])
def test_hour_and_weekday_are_local_to_rules_timezone(tmp_path, zone, night, weekend):
    (tmp_path / "r.yaml").write_text(CLOCK_RULES)
    expect = (f"rules: [{'NIGHT, ' if night else ''}{'WEEKEND' if weekend else 'MONDAY'}], "
              f"not_rules: [{'' if night else 'NIGHT, '}{'MONDAY' if weekend else 'WEEKEND'}]")
    (tmp_path / "r_test.yaml").write_text(textwrap.dedent(f"""\
        - name: one payment at 03:00 UTC on a Monday
          start: "2026-01-05T03:00:00Z"
          steps:
            - {{transaction: {{user_id: u1, amount: 5, currency: EUR, payee: P1}},
               expect: {{{expect}}}}}
        """))
    config = None if zone is None else parse_config({"rules": {"timezone": zone},
                                                     "routes": [ROUTE]}, {})
    out, err = io.StringIO(), io.StringIO()
    code = run_tests(tmp_path, out=out, err=err, scenario_runner=ScenarioRunner(config))
    assert code == 0, out.getvalue() + err.getvalue()
