"""Retention periods from the product rules (recorder/store/retention.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from recorder.store.config import RetentionRules
from recorder.store.retention import (
    Product,
    ProductKind,
    add_months,
    is_short_term_insurance,
    retain_until,
)

RECORDED = datetime(2026, 3, 10, 14, 30, tzinfo=UTC)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def test_wealth_product_six_months_after_it_ends() -> None:
    product = Product(ProductKind.WEALTH, ends_on=date(2027, 6, 30))
    # The whole of the end day is covered: retained until the start of the next day.
    assert retain_until(product, RECORDED) == midnight(date(2027, 12, 31))


def test_long_term_insurance_ten_years_after_the_contract_ends() -> None:
    product = Product(ProductKind.INSURANCE, starts_on=date(2026, 3, 10), ends_on=date(2046, 3, 9))
    assert not is_short_term_insurance(product, RetentionRules())
    assert retain_until(product, RECORDED) == midnight(date(2056, 3, 10))


def test_insurance_of_one_year_or_less_five_years_after_it_ends() -> None:
    exactly_one_year = Product(
        ProductKind.INSURANCE, starts_on=date(2026, 3, 10), ends_on=date(2027, 3, 10)
    )
    assert is_short_term_insurance(exactly_one_year, RetentionRules())
    assert retain_until(exactly_one_year, RECORDED) == midnight(date(2032, 3, 11))

    by_term = Product(ProductKind.INSURANCE, ends_on=date(2026, 9, 10), term_months=6)
    assert retain_until(by_term, RECORDED) == midnight(date(2031, 9, 11))


def test_insurance_a_day_over_one_year_is_long_term() -> None:
    product = Product(ProductKind.INSURANCE, starts_on=date(2026, 3, 10), ends_on=date(2027, 3, 11))
    assert not is_short_term_insurance(product, RetentionRules())
    assert retain_until(product, RECORDED) == midnight(date(2037, 3, 12))


def test_insurance_of_unknown_term_gets_the_longer_rule() -> None:
    product = Product(ProductKind.INSURANCE, ends_on=date(2027, 3, 10))
    assert retain_until(product, RECORDED) == midnight(date(2037, 3, 11))


@pytest.mark.parametrize("kind", list(ProductKind))
def test_unknown_end_date_uses_the_default_from_the_recording(kind: ProductKind) -> None:
    assert retain_until(Product(kind), RECORDED) == midnight(date(2036, 3, 11))


def test_general_service_ignores_an_end_date() -> None:
    product = Product(ProductKind.GENERAL, ends_on=date(2026, 4, 1))
    assert retain_until(product, RECORDED) == midnight(date(2036, 3, 11))


def test_rules_are_configurable() -> None:
    rules = RetentionRules(
        wealth_months_after_end=12,
        insurance_long_years_after_end=15,
        insurance_short_years_after_end=7,
        unknown_end_years=20,
    )
    assert retain_until(
        Product(ProductKind.WEALTH, ends_on=date(2027, 1, 31)), RECORDED, rules
    ) == midnight(date(2028, 2, 1))
    assert retain_until(
        Product(ProductKind.INSURANCE, ends_on=date(2030, 1, 1), term_months=48), RECORDED, rules
    ) == midnight(date(2045, 1, 2))
    assert retain_until(
        Product(ProductKind.INSURANCE, ends_on=date(2027, 1, 1), term_months=12), RECORDED, rules
    ) == midnight(date(2034, 1, 2))
    assert retain_until(Product(ProductKind.WEALTH), RECORDED, rules) == midnight(date(2046, 3, 11))


def test_product_that_already_ended_still_gets_the_minimum() -> None:
    ended = Product(ProductKind.WEALTH, ends_on=date(2020, 1, 1))
    until = retain_until(ended, RECORDED)
    assert until == midnight(RECORDED.date() + timedelta(days=183 + 1))
    assert until > RECORDED


def test_month_arithmetic_clamps_to_the_end_of_the_month() -> None:
    assert add_months(date(2026, 8, 31), 6) == date(2027, 2, 28)
    assert add_months(date(2027, 8, 31), 6) == date(2028, 2, 29)
    assert add_months(date(2028, 2, 29), 12) == date(2029, 2, 28)
    assert add_months(date(2026, 12, 15), 1) == date(2027, 1, 15)
    wealth_leap = Product(ProductKind.WEALTH, ends_on=date(2026, 8, 31))
    assert retain_until(wealth_leap, RECORDED) == midnight(date(2027, 3, 1))


def test_recording_time_is_taken_in_utc() -> None:
    # 01:00 on 1 Jan in Beijing is still 31 Dec in UTC.
    beijing = timezone(timedelta(hours=8))
    recorded = datetime(2027, 1, 1, 1, 0, tzinfo=beijing)
    assert retain_until(Product(ProductKind.GENERAL), recorded) == midnight(date(2037, 1, 1))


def test_result_is_aware_utc_and_deterministic() -> None:
    product = Product(ProductKind.INSURANCE, ends_on=date(2030, 5, 5), term_months=24)
    first = retain_until(product, RECORDED)
    assert first.tzinfo is UTC
    assert first == retain_until(product, RECORDED)


def test_naive_recording_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        retain_until(Product(ProductKind.GENERAL), datetime(2026, 1, 1))
