"""Rules of the PRC resident identity card (居民身份证), second generation.

Pure functions only: the OCR layer turns images into `IdCardFields`, and `check_card` decides
whether those fields describe a card that may be accepted on `today`. Nothing here trusts OCR:
every field may be missing or garbled, which is reported, never guessed.

References: GB 11643-1999 (citizen identification number), ISO 7064:1983 MOD 11-2 (check digit),
GB/T 2260 (administrative division codes; only the province level is checked here, because the
county list changes every year and old numbers stay valid after a county is renamed).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

# Weights 2^(17-i) mod 11 for positions 1..17 (ISO 7064 MOD 11-2).
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# Check character for (sum mod 11) = 0..10.
_CHECK_CHARS = "10X98765432"

# Province-level codes of GB/T 2260, plus 71 (Taiwan), 81/82 (Hong Kong/Macao residence permits
# for residents from there use the same number format) and 83 (Taiwan residents' permits).
PROVINCE_CODES: frozenset[str] = frozenset(
    {
        "11", "12", "13", "14", "15",
        "21", "22", "23",
        "31", "32", "33", "34", "35", "36", "37",
        "41", "42", "43", "44", "45", "46",
        "50", "51", "52", "53", "54",
        "61", "62", "63", "64", "65",
        "71", "81", "82", "83",
    }
)  # fmt: skip

LONG_TERM = "长期"
# Cards are issued, and expire, on dates of the issuing office: China's, whatever the host's
# clock says (a UTC server would accept a card expired in Beijing until 08:00).
CARD_TIMEZONE = ZoneInfo("Asia/Shanghai")
# The card is printed with full-width or ASCII separators; OCR returns either.
_VALIDITY_RE = re.compile(
    r"^\s*(\d{4})[.\-/年]?(\d{2})[.\-/月]?(\d{2})日?\s*[-—–~至]+\s*"
    r"(?:(\d{4})[.\-/年]?(\d{2})[.\-/月]?(\d{2})日?|(长期))\s*$"
)
_PRINTED_BIRTH_RE = re.compile(r"^\s*(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日?\s*$")


class Sex(StrEnum):
    MALE = "男"
    FEMALE = "女"


class Reason(StrEnum):
    """Why a card is refused. Stable identifiers: clients and the audit log use them."""

    CHECKSUM = "checksum"
    INVALID_NUMBER = "invalid_number"
    BIRTH_MISMATCH = "birth_mismatch"
    SEX_MISMATCH = "sex_mismatch"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    INVALID_VALIDITY = "invalid_validity"
    SIDES_MISMATCH = "sides_mismatch"
    MISSING_FIELD = "missing_field"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Problem:
    """One reason to refuse a card, with a message a customer can act on (zh first)."""

    reason: Reason
    field: str | None
    message_zh: str
    message_en: str

    def to_dict(self) -> dict[str, str | None]:
        return {
            "reason": self.reason.value,
            "field": self.field,
            "message_zh": self.message_zh,
            "message_en": self.message_en,
        }


@dataclass(frozen=True)
class IdNumber:
    """The parts of a valid 18-character number."""

    number: str
    region: str
    province: str
    birth_date: date
    sequence: str
    sex: Sex


@dataclass(frozen=True)
class Validity:
    start: date
    end: date | None  # None: 长期 (no end)

    @property
    def long_term(self) -> bool:
        return self.end is None


@dataclass(frozen=True)
class IdCardFields:
    """What is printed on a card. Front: name..id_number; back: issuing_authority, validity.

    Every field is optional because OCR may not find it; `check_card` reports what is missing.
    `validity_text` keeps the raw text so an unparseable period is reported, not dropped.
    """

    name: str | None = None
    sex: str | None = None
    ethnicity: str | None = None
    birth_date: date | None = None
    address: str | None = None
    id_number: str | None = None
    issuing_authority: str | None = None
    valid_from: date | None = None
    valid_until: date | None = None
    valid_long_term: bool = False
    validity_text: str | None = None

    def to_dict(self) -> dict[str, str | bool | None]:
        return {
            "name": self.name,
            "sex": self.sex,
            "ethnicity": self.ethnicity,
            "birth_date": self.birth_date.isoformat() if self.birth_date else None,
            "address": self.address,
            "id_number": self.id_number,
            "issuing_authority": self.issuing_authority,
            "valid_from": self.valid_from.isoformat() if self.valid_from else None,
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "valid_long_term": self.valid_long_term,
        }


class IdNumberError(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character for the first 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("need exactly 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def normalize_id_number(raw: str) -> str:
    """Upper-case, drop spaces; OCR often reads the check 'X' as 'x' or '×'. Full-width
    characters (１２３Ｘ, from OCR or a Chinese input method) become ASCII (NFKC), so the
    number recorded is the one canonical spelling."""
    text = unicodedata.normalize("NFKC", raw)
    return re.sub(r"\s+", "", text).replace("×", "X").replace("x", "X")


def parse_id_number(raw: str) -> IdNumber:
    """Parse and validate an 18-character number; raise IdNumberError saying why not."""
    number = normalize_id_number(raw)
    # [0-9], not \d: \d also matches other scripts' digits, which int() reads as 0-9.
    if not re.fullmatch(r"[0-9]{17}[0-9X]", number):
        raise IdNumberError(Reason.INVALID_NUMBER, "need 17 digits and a digit or X")
    if check_digit(number[:17]) != number[17]:
        raise IdNumberError(Reason.CHECKSUM, "check digit does not match")
    province = number[:2]
    if province not in PROVINCE_CODES:
        raise IdNumberError(Reason.INVALID_NUMBER, f"unknown province code {province}")
    try:
        birth = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError as exc:
        raise IdNumberError(Reason.INVALID_NUMBER, "birth date is not a date") from exc
    # The earliest living people; a number before is a misread (future births: check_front).
    if birth.year < 1880:
        raise IdNumberError(Reason.INVALID_NUMBER, "birth year before 1880")
    sequence = number[14:17]
    sex = Sex.MALE if int(number[16]) % 2 == 1 else Sex.FEMALE
    return IdNumber(number, number[:6], province, birth, sequence, sex)


def is_valid_id_number(raw: str) -> bool:
    try:
        parse_id_number(raw)
    except IdNumberError:
        return False
    return True


def mask_id_number(number: str) -> str:
    """What staff screens show of a number: the region (first 6) and the last 4, the common
    practice of Chinese banks (110105********123X). The hidden middle of an 18-character
    number is exactly the birth date, so screens that show this must not show the full birth
    date beside it (`staff_card_fields`). A misread too short to hide anything between those
    ends is hidden whole."""
    if len(number) <= 10:
        return "*" * len(number)
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


# The administrative divisions an address starts with (province, city, county or district);
# the street, building and room after them are hidden on staff screens.
_ADDRESS_REGION_RE = re.compile(r"^.{1,12}?[区县旗]")
_ADDRESS_SHOWN = 6


def mask_address(address: str) -> str:
    """北京市朝阳区建国路88号院3号楼 -> 北京市朝阳区****: up to the first county-level
    division when it comes within 13 characters, else the first 6 characters, and never more
    than half of what was read."""
    region = _ADDRESS_REGION_RE.match(address)
    shown = len(region[0]) if region else _ADDRESS_SHOWN
    return address[: min(shown, len(address) // 2)] + "****"


def staff_card_fields(fields: dict[str, str | bool]) -> dict[str, str | bool]:
    """A card side's fields as staff screens get them: enough to compare the card in the
    customer's hand with the customer (name, sex, birth year, validity), not to copy the
    number or the home address, nor the ethnic group, which nothing in a call is decided on.
    The full fields stay in the encrypted record, the auditor's index and the auditor portal."""
    shown = {key: value for key, value in fields.items() if key != "ethnicity"}
    if isinstance(number := fields.get("id_number"), str):
        shown["id_number"] = mask_id_number(number)
    if isinstance(address := fields.get("address"), str):
        shown["address"] = mask_address(address)
    if isinstance(birth := fields.get("birth_date"), str):
        shown["birth_date"] = birth[:4]  # ISO date: the year
    return shown


def parse_printed_birth(text: str) -> date | None:
    """'1990年1月5日' -> date; None when it is not such a date."""
    m = _PRINTED_BIRTH_RE.match(text)
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def parse_validity(text: str) -> Validity | None:
    """'2015.03.01-2035.03.01' or '2015.03.01-长期' -> Validity; None when unparseable."""
    m = _VALIDITY_RE.match(text.replace(" ", ""))
    if not m:
        return None
    try:
        start = date(int(m[1]), int(m[2]), int(m[3]))
        end = None if m[7] else date(int(m[4]), int(m[5]), int(m[6]))
    except ValueError:
        return None
    return Validity(start, end)


def card_today() -> date:
    """Today's date where the card was issued (`CARD_TIMEZONE`)."""
    return datetime.now(CARD_TIMEZONE).date()


def _anniversaries(d: date, years: int) -> set[date]:
    """The same month and day `years` later. A card issued on 29 February ends on 1 March of a
    common year (public-security practice, e.g. "2004.2.29-2014.3.1"); some offices printed
    28 February, so both are accepted rather than refusing a genuine card."""
    try:
        return {d.replace(year=d.year + years)}
    except ValueError:  # 29 February in a common year
        return {d.replace(year=d.year + years, day=28), date(d.year + years, 3, 1)}


# Resident ID Card Law art. 5: the term a card is issued for follows the holder's age in whole
# years (周岁) on applying: 5 years under 16, 10 from 16 to 25, 20 from 26 to 45, 长期 from 46.
# Term -> (from age, up to but not including age).
_TERM_AGES: dict[int | str, tuple[int, int | None]] = {
    5: (0, 16),
    10: (16, 26),
    20: (26, 46),
    LONG_TERM: (46, None),
}
# The age is taken on applying, the printed period starts on the issue date, which art. 12 puts
# within 60 days of the application (90 where travel is hard). Someone who applies just before
# the birthday that moves them up keeps the younger term on a card issued after that birthday;
# half a year is twice the statutory delay, room for offices that are late (docs/identity.md).
ISSUE_DELAY_TOLERANCE = timedelta(days=183)
# Hong Kong, Macao and Taiwan residents' residence permits (港澳台居民居住证) share the number
# format but are issued for 5 years at any age: art. 5 does not apply to them.
_PERMIT_PROVINCES = frozenset({"81", "82", "83"})


def _term_years(start: date, end: date) -> int | None:
    """The statutory term (5, 10 or 20 years) of a period; None when it is none of them."""
    terms = (n for n in _TERM_AGES if isinstance(n, int))
    return next((n for n in terms if end in _anniversaries(start, n)), None)


def _issued_at_age(birth: date, start: date, from_age: int, to_age: int | None) -> bool:
    """Whether a card starting on `start` can have been applied for by someone born on `birth`
    at an age in [from_age, to_age). For a 29 February birth the birthday of a common year is
    28 February or 1 March depending on who counts: the earlier one opens an age and the later
    one closes it, so neither reckoning refuses a genuine card."""
    if start < min(_anniversaries(birth, from_age)):
        return False
    return to_age is None or start <= max(_anniversaries(birth, to_age)) + ISSUE_DELAY_TOLERANCE


def is_expired(valid_until: date | None, today: date) -> bool:
    """A card is valid through its end date inclusive; 长期 (None) never expires."""
    return valid_until is not None and today > valid_until


def _problem(reason: Reason, field: str | None, zh: str, en: str) -> Problem:
    return Problem(reason, field, zh, en)


_FRONT_REQUIRED = ("name", "sex", "ethnicity", "birth_date", "address", "id_number")
_BACK_REQUIRED = ("issuing_authority",)
_FIELD_ZH = {
    "name": "姓名",
    "sex": "性别",
    "ethnicity": "民族",
    "birth_date": "出生日期",
    "address": "住址",
    "id_number": "公民身份号码",
    "issuing_authority": "签发机关",
    "validity": "有效期限",
}


def check_card(front: IdCardFields, back: IdCardFields | None, today: date) -> list[Problem]:
    """Every reason to refuse this card on `today`; empty when it may be accepted.

    `back` may be None when only the front was captured yet; then the validity is not checked
    and a missing_field problem says so.
    """
    problems = check_front(front, today)
    if back is None:
        problems.append(
            _problem(
                Reason.MISSING_FIELD,
                "validity",
                "请拍摄身份证国徽面",
                "take a photo of the back (national emblem side) of the card",
            )
        )
        return problems
    problems.extend(check_back(back, today))
    problems.extend(check_sides(front, back))
    return problems


def check_front(front: IdCardFields, today: date) -> list[Problem]:
    """The photo side's own checks: fields present, number valid, number agrees with the
    printed birth date and sex, and nobody is born after `today`."""
    problems: list[Problem] = []
    for name in _FRONT_REQUIRED:
        if getattr(front, name) in (None, ""):
            problems.append(
                _problem(
                    Reason.MISSING_FIELD,
                    name,
                    f"未能读取{_FIELD_ZH[name]}，请重新拍摄身份证人像面",
                    f"could not read {name.replace('_', ' ')}; retake the photo side of the card",
                )
            )
    parsed: IdNumber | None = None
    if front.id_number:
        try:
            parsed = parse_id_number(front.id_number)
        except IdNumberError as exc:
            if exc.reason is Reason.CHECKSUM:
                problems.append(
                    _problem(
                        Reason.CHECKSUM,
                        "id_number",
                        "身份证号码校验失败，请确认证件真实有效或重新拍摄",
                        "the ID number fails its check digit; retake the photo or use a "
                        "genuine card",
                    )
                )
            else:
                problems.append(
                    _problem(
                        exc.reason,
                        "id_number",
                        "身份证号码格式不正确，请重新拍摄",
                        f"the ID number is not valid ({exc}); retake the photo",
                    )
                )
    if parsed is None:
        return problems
    if parsed.birth_date > today:
        problems.append(
            _problem(
                Reason.INVALID_NUMBER,
                "id_number",
                "身份证号码中的出生日期晚于今天，请重新拍摄或更换证件",
                "the birth date in the ID number is after today; retake the photo or use "
                "another card",
            )
        )
    if front.birth_date is not None and front.birth_date != parsed.birth_date:
        problems.append(
            _problem(
                Reason.BIRTH_MISMATCH,
                "birth_date",
                "出生日期与身份证号码不一致，请重新拍摄身份证人像面，或使用本人有效证件",
                "the printed birth date does not match the ID number; retake the photo side of "
                "the card, or use your own valid card",
            )
        )
    if front.sex in (Sex.MALE.value, Sex.FEMALE.value):
        if front.sex != parsed.sex.value:
            problems.append(
                _problem(
                    Reason.SEX_MISMATCH,
                    "sex",
                    "性别与身份证号码不一致，请重新拍摄身份证人像面，或使用本人有效证件",
                    "the printed sex does not match the ID number; retake the photo side of "
                    "the card, or use your own valid card",
                )
            )
    elif front.sex:
        problems.append(
            _problem(
                Reason.UNREADABLE,
                "sex",
                "无法识别性别，请重新拍摄身份证人像面",
                "could not read the sex; retake the photo side of the card",
            )
        )
    return problems


def check_back(back: IdCardFields, today: date) -> list[Problem]:
    """The emblem side's checks: authority present, validity readable, well-formed, current."""
    problems: list[Problem] = []
    for name in _BACK_REQUIRED:
        if not getattr(back, name):
            problems.append(
                _problem(
                    Reason.MISSING_FIELD,
                    name,
                    f"未能读取{_FIELD_ZH[name]}，请重新拍摄身份证国徽面",
                    f"could not read {name.replace('_', ' ')}; retake the back of the card",
                )
            )
    if back.valid_from is None or (back.valid_until is None and not back.valid_long_term):
        if back.validity_text:
            problems.append(
                _problem(
                    Reason.UNREADABLE,
                    "validity",
                    "无法识别有效期限，请重新拍摄身份证国徽面",
                    "could not read the validity period; retake the back of the card",
                )
            )
        else:
            problems.append(
                _problem(
                    Reason.MISSING_FIELD,
                    "validity",
                    "未能读取有效期限，请重新拍摄身份证国徽面",
                    "could not read the validity period; retake the back of the card",
                )
            )
        return problems
    start = back.valid_from
    end = back.valid_until
    # Cards are issued for 5, 10 or 20 years (Resident ID Card Law, art. 5) and end on the same
    # month and day; anything else is a misread or a forgery.
    if end is not None and _term_years(start, end) is None:
        problems.append(
            _problem(
                Reason.INVALID_VALIDITY,
                "validity",
                "有效期限不符合规定，请重新拍摄或更换证件",
                "the validity period is not 5, 10 or 20 years; retake the photo",
            )
        )
    if start > today:
        problems.append(
            _problem(
                Reason.NOT_YET_VALID,
                "validity",
                "证件尚未生效，请使用当前有效的身份证",
                "the card is not valid yet; use your current card",
            )
        )
    if is_expired(end, today):
        problems.append(
            _problem(
                Reason.EXPIRED,
                "validity",
                "身份证已过期，请使用有效证件（可到派出所换领）",
                "the card has expired; use a valid card (renew it at a police station)",
            )
        )
    return problems


def check_sides(front: IdCardFields, back: IdCardFields) -> list[Problem]:
    """Whether the back's validity period can have been issued to the front's holder: the
    term follows the holder's age (`_TERM_AGES`), so a back whose term does not fit the birth
    date in the front's number belongs to another card, or was misread. Silent when either
    side lacks what it needs: `check_front` and `check_back` report that."""
    start = back.valid_from
    if start is None or not front.id_number:
        return []
    try:
        holder = parse_id_number(front.id_number)
    except IdNumberError:
        return []
    if holder.province in _PERMIT_PROVINCES:
        return []
    term: int | str | None
    if back.valid_until is not None:
        term = _term_years(start, back.valid_until)
    elif back.valid_long_term:
        term = LONG_TERM
    else:
        return []
    if term is None or _issued_at_age(holder.birth_date, start, *_TERM_AGES[term]):
        return []
    return [
        _problem(
            Reason.SIDES_MISMATCH,
            "validity",
            "国徽面与人像面不属于同一张身份证，请拍摄同一张身份证的两面",
            "the two sides do not belong to one card; photograph both sides of the same card",
        )
    ]
