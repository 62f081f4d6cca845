"""Numbers shared by every backend: bucket widths, scales, caps and retention.

Windows are sliding and bucketed: a window of W ms uses buckets of ``W // 60`` ms, and a read
sums the ``ceil(W / bucket)`` buckets ending with the current one. The covered span therefore
starts at most one bucket before or after ``now - W`` — the error the contract allows (1/60 of
the window). docs/counters.md explains the bound and how the tests check it.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

BUCKETS_PER_WINDOW = 60

# Sums are kept as integers in units of 10^-4: exact for every ISO 4217 currency (at most four
# minor-unit digits, e.g. CLF) and, as Lua numbers are doubles, exact up to 2^53 / 10^4 ≈ 9e11.
SUM_SCALE = 10_000

# No stored number passes this (2**52, in units of 1/SUM_SCALE for sums, about 4.5e11 for an
# amount): every increment is clamped to it and every bucket, running total and window total
# saturates at it. A value below it plus one increment stays below 2**53, where Lua's doubles
# still hold Redis's integers exactly, so nothing overflows or rounds silently;
# limits.max_amount keeps real amounts far below it.
NUMBER_CAP = 2 ** 52

# Distinct counters keep the last-seen time of at most this many members per entity; beyond it
# the least recently seen members are dropped, so the value saturates at the cap (see docs).
DISTINCT_CAP = 1000

# Counters without a window (first_seen, reset_on) are forgotten after this long without any
# write: long enough for yearly patterns, short enough that dead entities do not pile up.
RETENTION_MS = 400 * 86_400 * 1000

EVENT_TTL_S = 3600


def bucket_ms(window_ms: int) -> int:
    """Bucket width for a window: 1/60 of it, at least 1 ms."""
    return max(1, window_ms // BUCKETS_PER_WINDOW)


def bucket_count(window_ms: int, width_ms: int) -> int:
    """How many buckets (the current, partial one included) a read sums."""
    return -(-window_ms // width_ms)


def window_ttl_ms(window_ms: int, width_ms: int) -> int:
    """A bucket written now is read until its start is a full window plus a bucket behind."""
    return window_ms + width_ms


def scaled_amount(value: object) -> int | None:
    """An amount in units of 1/SUM_SCALE, or None when the value is not a finite number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite():
        return None
    scaled = int((amount * SUM_SCALE).to_integral_value(rounding=ROUND_HALF_EVEN))
    return max(-NUMBER_CAP, min(NUMBER_CAP, scaled))
