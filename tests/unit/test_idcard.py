"""Resident ID card rules: number structure, check digit, field agreement, validity."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from server.identity.idcard import (
    IdCardFields,
    IdNumberError,
    Reason,
    Sex,
    card_today,
    check_back,
    check_card,
    check_digit,
    check_front,
    is_expired,
    is_valid_id_number,
    mask_address,
    mask_id_number,
    parse_id_number,
    parse_printed_birth,
    parse_validity,
    staff_card_fields,
)
from tests.fixtures.idcards import ANNEX_BACK, ANNEX_FRONT, corrupt_check_digit, make_id_number

# Published examples: GB 11643-1999's own example, and widely used specimen numbers whose check
# digits follow the standard.
KNOWN_VALID = (
    "11010519491231002X",  # GB 11643-1999 annex example, female, 1949-12-31
    "440524188001010014",  # GB 11643-1999 example, male, 1880-01-01
    "110101199003074477",
    "320311197001013711",
)
KNOWN_INVALID = (
    "110105194912310021",  # wrong check digit (X expected)
    "440524188001010015",  # wrong check digit
    "11010519491231002",  # 17 characters
    "11010519491231002XX",  # 19 characters
    "1101051949123100X2",  # X not last
    "99010519491231002X",  # no such province (and its checksum is recomputed below)
    "",
    "abcdefghijklmnopqr",
)


@pytest.mark.parametrize("number", KNOWN_VALID)
def test_known_valid_numbers(number: str) -> None:
    assert is_valid_id_number(number)


@pytest.mark.parametrize("number", KNOWN_INVALID)
def test_known_invalid_numbers(number: str) -> None:
    assert not is_valid_id_number(number)


def test_check_digit_covers_every_residue() -> None:
    # Each of the 11 check characters is produced by some body: the table is complete.
    seen = {check_digit(f"1101051990010{i:04d}") for i in range(200)}
    assert seen == set("0123456789X")


def test_every_corrupted_check_digit_is_rejected_as_checksum() -> None:
    body = "11010519491231002"
    good = check_digit(body)
    for c in "0123456789X":
        if c == good:
            continue
        with pytest.raises(IdNumberError) as err:
            parse_id_number(body + c)
        assert err.value.reason is Reason.CHECKSUM


def test_single_digit_errors_are_always_caught() -> None:
    # MOD 11-2 detects every single-digit substitution: the property that makes it trustworthy.
    number = "440524188001010014"
    for pos in range(17):
        for d in "0123456789":
            if d == number[pos]:
                continue
            assert not is_valid_id_number(number[:pos] + d + number[pos + 1 :])


def test_adjacent_transpositions_are_caught() -> None:
    number = "320311197001013711"
    for pos in range(16):
        if number[pos] == number[pos + 1]:
            continue
        swapped = number[:pos] + number[pos + 1] + number[pos] + number[pos + 2 :]
        assert not is_valid_id_number(swapped)


def test_parse_parts() -> None:
    p = parse_id_number("11010519491231002x")  # lower-case x as OCR may return it
    assert p.number == "11010519491231002X"
    assert p.region == "110105" and p.province == "11"
    assert p.birth_date == date(1949, 12, 31)
    assert p.sequence == "002"
    assert p.sex is Sex.FEMALE
    assert parse_id_number("440524188001010014").sex is Sex.MALE


def full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in text)


def test_full_width_number_is_recorded_in_ascii() -> None:
    # OCR and Chinese input methods produce full-width digits: the same number, one spelling.
    for raw in ("11" + full_width("010519491231002X"), full_width("11010519491231002x")):
        p = parse_id_number(raw)
        assert p.number == "11010519491231002X"
        assert p.birth_date == date(1949, 12, 31)


def test_other_scripts_digits_are_refused() -> None:
    # int() reads Arabic-Indic and Devanagari digits as 0-9; they are no ID number.
    arabic = "".join(chr(0x0660 + int(c)) for c in "010519491231002")
    devanagari = "".join(chr(0x0966 + int(c)) for c in "010519491231002")
    for raw in ("11" + arabic + "X", "11" + devanagari + "X"):
        with pytest.raises(IdNumberError) as err:
            parse_id_number(raw)
        assert err.value.reason is Reason.INVALID_NUMBER


def test_invalid_birth_date_and_region_with_valid_checksum() -> None:
    bad_date = "1101051990023" + "0123"  # 1990-02-30
    bad_date = bad_date[:17] + check_digit(bad_date[:17])
    with pytest.raises(IdNumberError) as err:
        parse_id_number(bad_date)
    assert err.value.reason is Reason.INVALID_NUMBER
    bad_region = "99010519491231002"
    with pytest.raises(IdNumberError) as err:
        parse_id_number(bad_region + check_digit(bad_region))
    assert err.value.reason is Reason.INVALID_NUMBER


def test_make_and_corrupt_helpers() -> None:
    n = make_id_number("310104", date(1962, 1, 30), 246)
    assert is_valid_id_number(n)
    assert not is_valid_id_number(corrupt_check_digit(n))


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2015.03.01-2035.03.01", date(2015, 3, 1), date(2035, 3, 1)),
        ("2015.03.01—2035.03.01", date(2015, 3, 1), date(2035, 3, 1)),
        ("2015.03.01 - 长期", date(2015, 3, 1), None),
        ("20150301-20350301", date(2015, 3, 1), date(2035, 3, 1)),
        ("2015年03月01日-2035年03月01日", date(2015, 3, 1), date(2035, 3, 1)),
    ],
)
def test_parse_validity(text: str, start: date, end: date | None) -> None:
    v = parse_validity(text)
    assert v is not None
    assert v.start == start and v.end == end
    assert v.long_term == (end is None)


@pytest.mark.parametrize("text", ["", "2015.03.01", "2015.13.01-2035.13.01", "长期", "abc"])
def test_parse_validity_rejects(text: str) -> None:
    assert parse_validity(text) is None


def test_printed_birth() -> None:
    assert parse_printed_birth("1949年12月31日") == date(1949, 12, 31)
    assert parse_printed_birth("1990 年 1 月 5 日") == date(1990, 1, 5)
    assert parse_printed_birth("1990年2月30日") is None
    assert parse_printed_birth("一九九〇年") is None


def test_expiry_is_inclusive_and_long_term_never_expires() -> None:
    end = date(2025, 4, 20)
    assert not is_expired(end, date(2025, 4, 20))
    assert is_expired(end, date(2025, 4, 21))
    assert not is_expired(None, date(2999, 1, 1))


FRONT, BACK = ANNEX_FRONT, ANNEX_BACK
TODAY = date(2026, 6, 1)


def reasons(problems: list) -> list[str]:  # type: ignore[type-arg]
    return [p.reason.value for p in problems]


def test_valid_card_has_no_problems() -> None:
    assert check_card(FRONT, BACK, TODAY) == []


def test_checksum_problem() -> None:
    front = replace(FRONT, id_number="110105194912310021")
    assert reasons(check_card(front, BACK, TODAY)) == ["checksum"]


def test_birth_and_sex_mismatch() -> None:
    front = replace(FRONT, birth_date=date(1949, 12, 30), sex="男")
    assert sorted(reasons(check_front(front, TODAY))) == ["birth_mismatch", "sex_mismatch"]


def test_mismatch_messages_say_what_to_do() -> None:
    # An elderly customer told only that two things disagree does not know what to do next.
    front = replace(FRONT, birth_date=date(1949, 12, 30), sex="男")
    for problem in check_front(front, TODAY):
        assert "请" in problem.message_zh and "retake" in problem.message_en, problem


def test_unreadable_sex() -> None:
    assert reasons(check_front(replace(FRONT, sex="另"), TODAY)) == ["unreadable"]


def test_missing_fields_each_named() -> None:
    problems = check_front(IdCardFields(id_number="11010519491231002X"), TODAY)
    assert {p.field for p in problems} == {"name", "sex", "ethnicity", "birth_date", "address"}
    assert set(reasons(problems)) == {"missing_field"}
    assert all(p.message_zh and p.message_en for p in problems)


def test_missing_back_is_reported() -> None:
    assert reasons(check_card(FRONT, None, TODAY)) == ["missing_field"]


def test_expired_card() -> None:
    back = replace(
        BACK, valid_from=date(2005, 4, 20), valid_until=date(2025, 4, 20), valid_long_term=False
    )
    problems = check_back(back, TODAY)
    assert reasons(problems) == ["expired"]
    assert "过期" in problems[0].message_zh


def test_validity_rules() -> None:
    odd_length = replace(
        BACK, valid_from=date(2015, 3, 1), valid_until=date(2030, 3, 1), valid_long_term=False
    )
    assert reasons(check_back(odd_length, TODAY)) == ["invalid_validity"]
    future = replace(
        BACK, valid_from=date(2027, 1, 1), valid_until=date(2037, 1, 1), valid_long_term=False
    )
    assert reasons(check_back(future, TODAY)) == ["not_yet_valid"]


def test_card_issued_on_29_february_ends_on_1_march_or_28_february() -> None:
    for end in (date(2026, 3, 1), date(2026, 2, 28)):
        leap = replace(BACK, valid_from=date(2016, 2, 29), valid_until=end, valid_long_term=False)
        assert reasons(check_back(leap, date(2026, 2, 1))) == [], end
    late = replace(
        BACK, valid_from=date(2016, 2, 29), valid_until=date(2026, 3, 2), valid_long_term=False
    )
    assert reasons(check_back(late, date(2026, 2, 1))) == ["invalid_validity"]
    # In a leap end year the card ends on 29 February itself.
    leap_end = replace(
        BACK, valid_from=date(2004, 2, 29), valid_until=date(2024, 2, 29), valid_long_term=False
    )
    assert reasons(check_back(leap_end, date(2024, 2, 1))) == []


def test_birth_after_today_is_refused() -> None:
    number = "11010520990101" + "001"
    number += check_digit(number)
    front = replace(FRONT, id_number=number, birth_date=date(2099, 1, 1), sex="男")
    problems = check_front(front, TODAY)
    assert reasons(problems) == ["invalid_number"]
    assert "晚于今天" in problems[0].message_zh
    assert check_front(front, date(2099, 1, 1)) == []


def test_card_dates_are_china_dates() -> None:
    # A card ends on a date of the issuing office: on a UTC host the verification must not
    # accept a card that expired in Beijing eight hours earlier.
    from dataclasses import fields as dataclass_fields
    from datetime import datetime

    from server.identity.idcard import CARD_TIMEZONE
    from server.identity.verification import IdentityServices

    assert str(CARD_TIMEZONE) == "Asia/Shanghai"
    assert card_today() == datetime.now(CARD_TIMEZONE).date()
    default = {f.name: f.default for f in dataclass_fields(IdentityServices)}["today"]
    assert default is card_today


def test_staff_screens_get_the_number_masked_as_banks_do() -> None:
    assert mask_id_number("11010519491231002X") == "110105********002X"
    assert mask_id_number("110105491231002") == "110105*****1002"  # first generation, 15
    assert mask_id_number("12345678901") == "123456*8901"
    # A misread too short to hide anything between the ends is hidden whole.
    assert mask_id_number("1101052") == "*******"
    assert mask_id_number("") == ""


def test_staff_screens_get_the_address_down_to_its_district() -> None:
    assert mask_address("北京市朝阳区建国路88号院3号楼2单元1101号") == "北京市朝阳区****"
    assert mask_address("广东省深圳市南山区科技园南区高新南七道18号") == "广东省深圳市南山区****"
    assert mask_address("新疆维吾尔自治区乌鲁木齐市天山区解放南路1号") == "新疆维吾尔自治区****"
    assert mask_address("江苏省昆山市玉山镇人民路100号") == "江苏省昆山市****"  # no district
    assert mask_address("北京市朝阳区") == "北京市****"  # never more than half of what was read
    assert mask_address("") == "****"


def test_the_fields_staff_get_do_not_add_up_to_the_number() -> None:
    # The masked middle of the number is the birth date: showing the date beside it would
    # give the whole number back. Staff get the year.
    front = {k: v for k, v in ANNEX_FRONT.to_dict().items() if v not in (None, False)}
    shown = staff_card_fields(front)
    assert shown == {
        "name": "张伟",
        "sex": "女",
        "birth_date": "1949",
        "address": "北京市朝阳区****",
        "id_number": "110105********002X",
    }
    assert "19491231" not in str(shown) and "建国路" not in str(shown)
    assert "汉" not in str(shown)  # the ethnic group decides nothing in a call
    back = {k: v for k, v in ANNEX_BACK.to_dict().items() if v not in (None, False)}
    assert staff_card_fields(back) == back  # nothing personal on the back
