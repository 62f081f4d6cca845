"""amount_base through a real gateway: conversion, the route's policy for a currency without a
rate, sums in the base currency, and the rates file reloaded like the rules."""

from __future__ import annotations

import json

import requests

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
counters:
  - {name: paid_24h, key: [user_id], window: 24h, aggregate: sum, field: amount_base, on: allow}
rules:
  - {id: BIG, description: more than 100 EUR, when: amount_base > 100, action: deny}
  - {id: DAY, description: more than 150 EUR a day, when: amount_base + paid_24h > 150, action: deny}
  - {id: UNRATED, description: no rate, when: currency_unrated, action: deny}
"""
RATES = "USD: {rate: 0.9, date: 2026-01-02}\nKWD: {rate: 3.0, date: 2026-01-02}\n"
FIELDS = {"user_id": "json:$.user_id", "amount": "json:$.amount", "currency": "json:$.currency"}


def _start(start_gateway, tmp_path, upstream, reload="off"):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "main.yaml").write_text(RULES)
    rates = tmp_path / "rates.yaml"
    rates.write_text(RATES)
    gw = start_gateway({
        "rules": {"path": str(tmp_path / "rules"), "reload": reload},
        "currencies": {"base": "EUR", "rates": str(rates)},
        "routes": [{"name": "pay", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": FIELDS},
                   {"name": "orders", "match": {"path": "/orders"}, "upstream": upstream.url,
                    "transaction": FIELDS, "currency_without_rate": "high_risk"}]})
    gw.rates = rates
    gw.client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"])
    return gw


def pay(gw, user, amount, currency, path="/pay"):
    return gw.client.request("POST", f"{gw.url}{path}",
                             json={"user_id": user, "amount": amount, "currency": currency})


def test_amounts_are_decided_and_summed_in_the_base_currency(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream)
    assert pay(gw, "a", 110, "USD").status_code == 200          # 99 EUR
    assert pay(gw, "b", 34, "KWD").status_code == 403           # 102 EUR
    assert pay(gw, "b", 100, "EUR").status_code == 200
    assert pay(gw, "b", 101, "EUR").status_code == 403
    assert pay(gw, "a", 40, "EUR").status_code == 200           # 99 + 40 EUR today
    assert pay(gw, "a", 14, "KWD").status_code == 403           # + 42 EUR > 150
    refused = pay(gw, "c", 10, "XOF")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    assert "no exchange rate for XOF" in refused.json()["message"]
    assert pay(gw, "c", 10, "XOF", "/orders").status_code == 403   # high_risk: UNRATED
    assert pay(gw, "c", 10, "USD", "/orders").status_code == 200
    metrics = gw.metrics()
    assert 'txgate_bad_requests_total{error="invalid_request",route="pay"} 1.0' in metrics
    records = gw.decisions()
    assert records[0]["features"]["amount_base"] == 99.0
    assert records[0]["transaction"] == {"user_id": "a", "amount": 110, "currency": "USD"}
    assert any(r["features"].get("currency_unrated") is True for r in records)


def test_the_rates_file_reloads_with_the_rules_and_a_broken_one_is_kept_out(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream)
    assert pay(gw, "a", 110, "USD").status_code == 200
    gw.rates.write_text("USD: {rate: 1.0, date: 2026-01-05}\n")
    assert gw.admin_post("/admin/rules/reload").status_code == 200
    assert pay(gw, "b", 110, "USD").status_code == 403          # 110 EUR now
    assert pay(gw, "b", 10, "KWD").status_code == 400           # no longer rated
    gw.rates.write_text("USD: {rate: 0.9, date: yesterday}\n")
    r = gw.admin_post("/admin/rules/reload")
    assert r.status_code == 422 and r.json()["error"] == "rates_invalid"
    assert r.json()["errors"] == [f"{gw.rates}:1: USD: date must be the day of the rate, YYYY-MM-DD"]
    assert pay(gw, "c", 110, "USD").status_code == 403          # the running rates stay
    assert 'txgate_rates_reloads_total{outcome="failure"} 1.0' in gw.metrics()
    ready = requests.get(f"{gw.admin}/readyz", timeout=5).json()
    assert "USD: date must be the day of the rate" in ready["rates_reload_error"]


def test_a_watched_rates_file_reloads_when_it_changes(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream, reload="watch")
    assert pay(gw, "a", 110, "USD").status_code == 200
    gw.rates.write_text("USD: {rate: 2.0, date: 2026-01-05}\n")
    users = iter(range(1000))   # a new user per try: the day's sum must not decide
    wait_until(lambda: pay(gw, f"u{next(users)}", 60, "USD").status_code == 403,
               what="rates reloaded")
    assert "exchange rates reloaded: base EUR, 1 currencies, oldest rate of 2026-01-05" in gw.stderr()
