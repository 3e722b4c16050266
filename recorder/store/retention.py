"""How long a recording must stay under COMPLIANCE retention, from the product it is about.

`retain_until()` is a pure function of the product, the recording time and the (configurable)
rules, so the same inputs always give the same date: a segment re-uploaded after a crash gets
exactly the retention its first upload asked for.

Dates are rounded *up* to the next midnight UTC. A product's end date is a calendar date in the
bank's time zone; 00:00 UTC of the following day is 08:00 in China, so the whole local day is
covered in every time zone east of UTC, and retention is never shorter than the rule.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

from recorder.store.config import RetentionRules


class ProductKind(StrEnum):
    """The business of a session (the same values as server/sessions/store.py's BUSINESSES)."""

    WEALTH = "wealth"
    INSURANCE = "insurance"
    GENERAL = "general"


@dataclass(frozen=True)
class Product:
    """What a recording is about, as far as retention cares.

    `ends_on` is the day the product or contract ends (None: not known, or open-ended). For
    insurance, the term decides between the long and the short rule: `term_months` if known, else
    `starts_on`..`ends_on`; when neither is known, the policy counts as long-term (the longer
    retention), because keeping too long is recoverable and deleting too early is not.
    """

    kind: ProductKind
    ends_on: date | None = None
    starts_on: date | None = None
    term_months: int | None = None


def add_months(day: date, months: int) -> date:
    """`day` plus `months` calendar months, clamped to the month's end (Aug 31 + 6 → Feb 28)."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def is_short_term_insurance(product: Product, rules: RetentionRules) -> bool:
    """True when the policy's term is at most `rules.insurance_short_max_months` (one year)."""
    if product.term_months is not None:
        return product.term_months <= rules.insurance_short_max_months
    if product.starts_on is not None and product.ends_on is not None:
        return product.ends_on <= add_months(product.starts_on, rules.insurance_short_max_months)
    return False


def _end_of_day_utc(day: date) -> datetime:
    # Midnight UTC starting the next day: the whole of `day` is retained (see module docstring).
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


def retain_until(
    product: Product, recorded_at: datetime, rules: RetentionRules | None = None
) -> datetime:
    """The COMPLIANCE retain-until date (aware, UTC, a midnight) for a recording of `product`.

    - wealth: `wealth_months_after_end` (6) months after `ends_on`;
    - insurance over one year: `insurance_long_years_after_end` (10) years after `ends_on`;
    - insurance of one year or less: `insurance_short_years_after_end` (5) years after `ends_on`;
    - unknown end date, or general service: `unknown_end_years` (10) years after the recording;
    - never less than `minimum_days` after the recording.
    """
    if recorded_at.tzinfo is None or recorded_at.utcoffset() is None:
        raise ValueError("recorded_at must be timezone-aware (a naive time is ambiguous)")
    rules = rules or RetentionRules()
    recorded_day = recorded_at.astimezone(UTC).date()

    if product.ends_on is None or product.kind is ProductKind.GENERAL:
        by_rule = add_months(recorded_day, 12 * rules.unknown_end_years)
    elif product.kind is ProductKind.WEALTH:
        by_rule = add_months(product.ends_on, rules.wealth_months_after_end)
    elif is_short_term_insurance(product, rules):
        by_rule = add_months(product.ends_on, 12 * rules.insurance_short_years_after_end)
    else:
        by_rule = add_months(product.ends_on, 12 * rules.insurance_long_years_after_end)

    floor = recorded_day + timedelta(days=rules.minimum_days)
    return _end_of_day_utc(max(by_rule, floor))
