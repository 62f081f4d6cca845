"""Money in one currency: the operator's exchange-rate file and the built-in ``amount_base``.

Rules compare amounts, and 9,000 means nothing without its currency (9,000 KWD is about 27,000
EUR). The gateway converts every amount into the configured base currency with the rates file
and hands the rules ``amount_base``; counters sum ``amount_base``. The file is reloaded like the
rules (watch, SIGHUP, the admin reload): a file that fails to load never replaces the running
rates. A currency without a rate is the route's choice (``currency_without_rate``): ``refuse``
answers 400, ``high_risk`` decides without ``amount_base`` and sets ``currency_unrated``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from gateway.currencies import ISO_4217, minor_units
from gateway.errors import InvalidRequest
from gateway.watch import FileWatch
from metrics.definitions import RATES_RELOADS
from rules.yamlsrc import LineDict, line_of, load_yaml

log = logging.getLogger("txgate.rates")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RATE_KEYS = {"rate", "date"}


class RatesError(Exception):
    """The rates file cannot be used; ``errors`` are FILE:LINE: message lines."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Rate:
    rate: Decimal                # 1 unit of the currency is worth `rate` units of the base
    date: datetime.date          # the day the operator took the rate


@dataclass(frozen=True)
class Rates:
    base: str
    rates: dict[str, Rate]       # the base currency itself is not listed

    def to_base(self, amount: float, currency: str) -> float | None:
        """``amount`` of ``currency`` in the base currency, rounded to the base's minor unit;
        None when the currency has no rate."""
        if currency == self.base:
            rate = Decimal(1)
        elif currency in self.rates:
            rate = self.rates[currency].rate
        else:
            return None
        exact = Decimal(repr(amount)) * rate
        return float(exact.quantize(Decimal(1).scaleb(-minor_units(self.base)), ROUND_HALF_EVEN))

    @property
    def oldest(self) -> datetime.date | None:
        return min((r.date for r in self.rates.values()), default=None)


def parse_rates(text: str, base: str, file: str = "rates") -> Rates:
    """Validate a rates document: ``CODE: {rate: NUMBER, date: YYYY-MM-DD}`` per currency."""
    data, problems = load_yaml(text)
    errors = [f"{file}:{ln}: {m}" for ln, m in problems]
    if data is None:
        data = LineDict()
    if not isinstance(data, LineDict):
        raise RatesError(errors + [f"{file}:{line_of(data)}: a rates file maps currency codes to {{rate, date}}"])
    rates = {}
    for code, entry in data.items():
        where = f"{file}:{line_of(data, code)}"
        if code not in ISO_4217:
            errors.append(f"{where}: {code!r} is not an ISO 4217 currency code")
            continue
        if code == base:
            errors.append(f"{where}: {code} is the base currency: it has no rate")
            continue
        if not isinstance(entry, LineDict):
            errors.append(f"{where}: {code}: expected {{rate: NUMBER, date: YYYY-MM-DD}}")
            continue
        unknown = [k for k in entry if k not in _RATE_KEYS]
        errors += [f"{file}:{line_of(entry, k)}: {code}: unknown key {k!r}" for k in unknown]
        rate, date = entry.get("rate"), entry.get("date")
        if (isinstance(rate, bool) or not isinstance(rate, (int, float))
                or not math.isfinite(rate) or rate <= 0):
            errors.append(f"{where}: {code}: rate must be a positive number")
            continue
        try:
            date = datetime.date.fromisoformat(date) if _DATE.match(str(date)) else None
        except ValueError:
            date = None
        if date is None:
            errors.append(f"{where}: {code}: date must be the day of the rate, YYYY-MM-DD")
            continue
        rates[code] = Rate(Decimal(repr(rate)) if isinstance(rate, float) else Decimal(rate), date)
    if errors:
        raise RatesError(errors)
    return Rates(base, rates)


def load_rates(path: str | Path | None, base: str) -> Rates:
    """The rates file at ``path`` (none: only the base currency has a rate)."""
    if path is None:
        return Rates(base, {})
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RatesError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return parse_rates(text, base, str(path))


def money_attributes(transaction: dict, rates: Rates, policy: str) -> dict:
    """``amount_base`` of a transaction, or ``currency_unrated`` under ``high_risk``.

    A transaction without a currency is in the base currency. Raises InvalidRequest when the
    currency has no rate and the route's policy is ``refuse``."""
    amount = transaction.get("amount")
    if amount is None:
        return {}
    currency = transaction.get("currency", rates.base)
    base = rates.to_base(amount, currency)
    if base is not None:
        return {"amount_base": base}
    if policy == "refuse":
        raise InvalidRequest(f"currency: no exchange rate for {currency}")
    return {"currency_unrated": True}


class RateBook:
    """The running rates of one process and their reload; a failed load keeps the old ones."""

    def __init__(self, path: str | None, base: str):
        self.path, self.base = path, base
        self.current: Rates | None = None
        self.last_error: str | None = None
        self._watch = FileWatch(self._fingerprint, self.reload_quietly)

    def load(self) -> Rates:
        """Read the file and swap it in; raises RatesError and keeps the running rates."""
        try:
            rates = load_rates(self.path, self.base)
        except RatesError as exc:
            RATES_RELOADS.labels("failure").inc()
            self.last_error = "\n".join(exc.errors)
            if self.current is not None:   # at start-up the caller reports it and exits
                log.error("rates reload failed, keeping the running rates:\n%s", self.last_error)
            raise
        if self.current is not None:   # a start-up prints nothing before a possible error
            log.info("exchange rates reloaded: base %s, %d currencies, oldest rate of %s",
                     rates.base, len(rates.rates), rates.oldest)
        self.current, self.last_error = rates, None
        RATES_RELOADS.labels("success").inc()
        return rates

    def reload_quietly(self) -> None:
        with contextlib.suppress(RatesError):
            self.load()

    def _fingerprint(self) -> tuple:
        try:
            stat = Path(self.path).stat()
            return stat.st_mtime_ns, stat.st_size
        except OSError:
            return ()

    def watch(self, interval_s: float = 1.0) -> None:
        """Reload when the file changes and then stays unchanged (gateway.watch)."""
        if self.path is not None:
            self._watch.start(interval_s)

    async def close(self) -> None:
        await self._watch.stop()
