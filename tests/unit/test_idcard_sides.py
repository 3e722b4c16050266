"""The two sides of one card: the validity term on the back must fit the age of the holder whose
number is on the front (Resident ID Card Law art. 5), with the issue-delay tolerance."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from server.identity.idcard import (
    ISSUE_DELAY_TOLERANCE,
    IdCardFields,
    Reason,
    check_card,
    check_sides,
)
from tests.fixtures.idcards import (
    ANNEX_BACK,
    ANNEX_FRONT,
    corrupt_check_digit,
    make_id_number,
)

DAY = timedelta(days=1)
LONG = None  # 长期


def front(birth: date, region: str = "110105") -> IdCardFields:
    # Sequence 2: even, a woman, as ANNEX_FRONT's printed sex says.
    return replace(
        ANNEX_FRONT, id_number=make_id_number(region, birth, 2), birth_date=birth, sex="女"
    )


def back(start: date, years: int | None, end: date | None = None) -> IdCardFields:
    if years is not None and end is None:
        end = start.replace(year=start.year + years)
    return replace(ANNEX_BACK, valid_from=start, valid_until=end, valid_long_term=years is None)


def fits(birth: date, start: date, years: int | None, end: date | None = None) -> bool:
    problems = check_sides(front(birth), back(start, years, end))
    assert all(p.reason is Reason.SIDES_MISMATCH for p in problems)
    return not problems


@pytest.mark.parametrize(
    ("birth", "start", "years"),
    [
        (date(2012, 5, 10), date(2020, 1, 6), 5),  # 7 years old
        (date(2000, 5, 10), date(2020, 1, 6), 10),  # 19
        (date(1990, 5, 10), date(2020, 1, 6), 20),  # 29
        (date(1960, 5, 10), date(2020, 1, 6), LONG),  # 59
        (date(1890, 5, 10), date(2006, 1, 6), LONG),  # 115: 长期 has no upper age
    ],
)
def test_each_term_fits_its_age(birth: date, start: date, years: int | None) -> None:
    assert fits(birth, start, years)


@pytest.mark.parametrize(
    ("birth", "start", "years"),
    [
        (date(1990, 5, 10), date(2020, 6, 1), 10),  # a 30-year-old's card with 10 years
        (date(2000, 5, 10), date(2020, 6, 1), LONG),  # a 20-year-old's with 长期
        (date(1980, 5, 10), date(2020, 6, 1), 5),  # 5 years are for children only
        (date(2010, 5, 10), date(2020, 6, 1), 20),  # a 10-year-old's with 20 years
        (date(1950, 5, 10), date(2020, 6, 1), 10),  # a 70-year-old's with 10 years
        (date(2016, 5, 10), date(2010, 6, 1), 5),  # issued before the holder was born
    ],
)
def test_term_that_does_not_fit_the_holder_is_refused(
    birth: date, start: date, years: int | None
) -> None:
    assert not fits(birth, start, years)


BIRTH = date(1979, 8, 20)


@pytest.mark.parametrize(("age", "younger", "older"), [(16, 5, 10), (26, 10, 20), (46, 20, LONG)])
def test_boundary_with_issue_delay_tolerance(age: int, younger: int, older: int | None) -> None:
    birthday = BIRTH.replace(year=BIRTH.year + age)
    # The older term starts on the birthday, not before: nobody applies before being born.
    assert not fits(BIRTH, birthday - DAY, older)
    assert fits(BIRTH, birthday, older)
    # The younger term: applied before the birthday, issued up to the tolerance after it.
    assert fits(BIRTH, birthday - DAY, younger)
    assert fits(BIRTH, birthday, younger)
    assert fits(BIRTH, birthday + ISSUE_DELAY_TOLERANCE, younger)
    assert not fits(BIRTH, birthday + ISSUE_DELAY_TOLERANCE + DAY, younger)


def test_applied_at_45_issued_at_46() -> None:
    # Applied a month before the 46th birthday, issued after the longest delay art. 12 allows
    # (60 + 30 days): still the 20 years of a 45-year-old.
    applied = BIRTH.replace(year=BIRTH.year + 46) - timedelta(days=30)
    assert fits(BIRTH, applied + timedelta(days=90), 20)
    # A year after the birthday that is no delay any more: another card, or a misread.
    assert not fits(BIRTH, applied + timedelta(days=30 + 365), 20)


def test_child_card_starts_on_birth_at_the_earliest() -> None:
    born = date(2015, 3, 4)
    assert fits(born, born, 5)
    assert not fits(born, born - DAY, 5)


LEAP_BIRTH = date(2000, 2, 29)


def test_29_february_birth_in_a_common_year() -> None:
    # 26 in 2026, a common year: some count the birthday on 28 February, the issuing offices
    # on 1 March. The older term is open from the earlier, the younger closes after the later.
    assert not fits(LEAP_BIRTH, date(2026, 2, 27), 20)
    assert fits(LEAP_BIRTH, date(2026, 2, 28), 20)
    assert fits(LEAP_BIRTH, date(2026, 3, 1) + ISSUE_DELAY_TOLERANCE, 10)
    assert not fits(LEAP_BIRTH, date(2026, 3, 1) + ISSUE_DELAY_TOLERANCE + DAY, 10)


def test_29_february_birth_in_a_leap_year() -> None:
    # 16 on 29 February 2016 itself; a 10-year card issued that day ends on 1 March 2026.
    assert fits(LEAP_BIRTH, date(2016, 2, 29), 10, date(2026, 3, 1))
    assert fits(LEAP_BIRTH, date(2016, 2, 29), 10, date(2026, 2, 28))
    assert not fits(LEAP_BIRTH, date(2016, 2, 28), 10)
    assert fits(LEAP_BIRTH, date(2016, 2, 28), 5)


def test_residence_permits_are_five_years_at_any_age() -> None:
    # 港澳台居民居住证 (81, 82, 83) are issued for 5 years whatever the age; art. 5 is not theirs.
    for region in ("810000", "820000", "830000"):
        adult = front(date(1970, 1, 1), region)
        assert check_sides(adult, back(date(2020, 1, 6), 5)) == []
    resident = front(date(1970, 1, 1), "440305")
    assert check_sides(resident, back(date(2020, 1, 6), 5)) != []


def test_check_card_reports_the_other_cards_back() -> None:
    # ANNEX_FRONT's holder was born in 1949: 60 when this 10-year card was issued.
    other_back = back(date(2010, 5, 1), 10)
    problems = check_card(ANNEX_FRONT, other_back, date(2019, 1, 1))
    assert [p.reason for p in problems] == [Reason.SIDES_MISMATCH]
    assert problems[0].field == "validity"
    assert problems[0].message_zh == "国徽面与人像面不属于同一张身份证，请拍摄同一张身份证的两面"
    assert "photograph both sides of the same card" in problems[0].message_en
    assert check_card(ANNEX_FRONT, ANNEX_BACK, date(2019, 1, 1)) == []


def test_nothing_to_compare_is_left_to_the_side_checks() -> None:
    today = date(2026, 6, 1)
    young = front(date(2000, 5, 10))
    # A number that fails its check digit: only the checksum is reported.
    bad_number = replace(
        young, id_number=corrupt_check_digit(make_id_number("110105", date(2000, 5, 10), 2))
    )
    reasons = [p.reason for p in check_card(bad_number, back(date(2020, 1, 6), LONG), today)]
    assert reasons == [Reason.CHECKSUM]
    # A period that is no statutory term: only invalid_validity.
    odd = back(date(2020, 1, 6), 7)
    assert [p.reason for p in check_card(young, odd, today)] == [Reason.INVALID_VALIDITY]
    # No validity read, or no number read: nothing to compare.
    unread = replace(
        ANNEX_BACK, valid_from=None, valid_until=None, valid_long_term=False, validity_text=None
    )
    assert [p.reason for p in check_card(young, unread, today)] == [Reason.MISSING_FIELD]
    assert check_sides(replace(young, id_number=None), back(date(2020, 1, 6), LONG)) == []
    # The back alone (only the front captured yet) is not compared either.
    assert [p.reason for p in check_card(young, None, today)] == [Reason.MISSING_FIELD]
