"""Exchange rates: the file format and its errors, amount_base, the route's policy, reload."""
import datetime

import pytest

from gateway.config import ConfigError, parse_config
from gateway.errors import InvalidRequest
from gateway.rates import RateBook, RatesError, Rates, money_attributes, parse_rates

GOOD = """\
USD: {rate: 0.92, date: 2026-01-02}
KWD: {rate: 2.99, date: "2026-01-03"}
JPY: {rate: 0.0061, date: 2025-12-31}
"""


def test_a_rates_file_maps_codes_to_a_rate_and_its_date():
    rates = parse_rates(GOOD, "EUR")
    assert rates.rates["USD"].date == datetime.date(2026, 1, 2)
    assert rates.rates["KWD"].date == datetime.date(2026, 1, 3)
    assert rates.oldest == datetime.date(2025, 12, 31)


def test_amounts_are_valued_in_the_base_currency_at_its_minor_unit():
    rates = parse_rates(GOOD, "EUR")
    assert rates.to_base(9000, "KWD") == 26910.0
    assert rates.to_base(1.005, "KWD") == 3.0            # 3.00495 rounds to EUR cents
    assert rates.to_base(100000, "JPY") == 610.0
    assert rates.to_base(0.1, "USD") == 0.09             # 0.092, half-even to 2 decimals
    assert rates.to_base(12.34, "EUR") == 12.34
    assert rates.to_base(5, "XOF") is None
    in_yen = parse_rates("EUR: {rate: 163.5, date: 2026-01-02}\n", "JPY")
    assert in_yen.to_base(10.01, "EUR") == 1637.0        # JPY has no minor unit


def test_every_problem_of_a_rates_file_is_reported_with_its_line():
    text = """\
USD: {rate: 0.92, date: 2026-01-02}
usd: {rate: 0.92, date: 2026-01-02}
EUR: {rate: 1, date: 2026-01-02}
GBP: {rate: -1, date: 2026-01-02}
CHF: {rate: 1.05}
SEK: {rate: 0.09, date: 2026-02-30, source: ecb}
NOK: 0.085
USD: {rate: 0.93, date: 2026-01-03}
"""
    with pytest.raises(RatesError) as info:
        parse_rates(text, "EUR", "r.yaml")
    assert info.value.errors == [
        "r.yaml:8: duplicate key 'USD'",
        "r.yaml:2: 'usd' is not an ISO 4217 currency code",
        "r.yaml:3: EUR is the base currency: it has no rate",
        "r.yaml:4: GBP: rate must be a positive number",
        "r.yaml:5: CHF: date must be the day of the rate, YYYY-MM-DD",
        "r.yaml:6: SEK: unknown key 'source'",
        "r.yaml:6: SEK: date must be the day of the rate, YYYY-MM-DD",
        "r.yaml:7: NOK: expected {rate: NUMBER, date: YYYY-MM-DD}",
    ]
    with pytest.raises(RatesError) as info:
        parse_rates("- USD\n", "EUR", "r.yaml")
    assert info.value.errors == ["r.yaml:1: a rates file maps currency codes to {rate, date}"]


def test_the_route_chooses_what_a_currency_without_a_rate_means():
    rates = parse_rates(GOOD, "EUR")
    assert money_attributes({"amount": 10, "currency": "USD"}, rates, "refuse") == {"amount_base": 9.2}
    assert money_attributes({"amount": 10}, rates, "refuse") == {"amount_base": 10.0}   # base currency
    assert money_attributes({"user_id": "u"}, rates, "refuse") == {}
    assert money_attributes({"amount": 10, "currency": "XOF"}, rates, "high_risk") == {"currency_unrated": True}
    with pytest.raises(InvalidRequest, match="currency: no exchange rate for XOF"):
        money_attributes({"amount": 10, "currency": "XOF"}, rates, "refuse")


def test_a_failed_reload_keeps_the_running_rates(tmp_path):
    path = tmp_path / "rates.yaml"
    path.write_text(GOOD)
    book = RateBook(str(path), "EUR")
    first = book.load()
    path.write_text("USD: {rate: zero, date: 2026-01-02}\n")
    with pytest.raises(RatesError):
        book.load()
    assert book.current is first and "USD: rate must be a positive number" in book.last_error
    path.write_text("USD: {rate: 1.5, date: 2026-01-05}\n")
    book.reload_quietly()
    assert book.current.to_base(10, "USD") == 15.0 and book.last_error is None
    path.unlink()
    with pytest.raises(RatesError, match="cannot read"):
        book.load()
    assert RateBook(None, "EUR").load() == Rates("EUR", {})


def test_config_keys():
    config = parse_config({"currencies": {"base": "CHF", "rates": "r.yaml"}}, {})
    assert config.currencies.base == "CHF" and config.currencies.rates == "r.yaml"
    assert parse_config({}, {}).currencies.base == "EUR"
    with pytest.raises(ConfigError, match="currencies.base: .*ISO 4217"):
        parse_config({"currencies": {"base": "eur"}}, {})
    route = {"name": "p", "match": {"path": "/p"}, "upstream": "http://127.0.0.1:1"}
    assert parse_config({"routes": [route]}, {}).routes[0].currency_without_rate == "refuse"
    with pytest.raises(ConfigError, match="routes.0.currency_without_rate|routes\\[0\\].currency_without_rate"):
        parse_config({"routes": [{**route, "currency_without_rate": "maybe"}]}, {})
