"""Map OCR lines of an ID card photo to `IdCardFields`.

The recogniser returns lines in no guaranteed order, sometimes merges a label with its value
("民族汉") and sometimes splits one printed line in two. So the parser first deskews the line
boxes (the photo may be tilted), groups them into rows, and then reads each row by its label.
A value is never invented: a field whose label or value is not found stays None.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from server.identity.idcard import IdCardFields, normalize_id_number, parse_validity
from server.identity.ocr import Side, TextLine

ETHNIC_GROUPS = frozenset(
    [
        "汉",
        "蒙古",
        "回",
        "藏",
        "维吾尔",
        "苗",
        "彝",
        "壮",
        "布依",
        "朝鲜",
        "满",
        "侗",
        "瑶",
        "白",
        "土家",
        "哈尼",
        "哈萨克",
        "傣",
        "黎",
        "傈僳",
        "佤",
        "畲",
        "高山",
        "拉祜",
        "水",
        "东乡",
        "纳西",
        "景颇",
        "柯尔克孜",
        "土",
        "达斡尔",
        "仫佬",
        "羌",
        "布朗",
        "撒拉",
        "毛南",
        "仡佬",
        "锡伯",
        "阿昌",
        "普米",
        "塔吉克",
        "怒",
        "乌孜别克",
        "俄罗斯",
        "鄂温克",
        "德昂",
        "保安",
        "裕固",
        "京",
        "塔塔尔",
        "独龙",
        "鄂伦春",
        "赫哲",
        "门巴",
        "珞巴",
        "基诺",
    ]
)
_ID_RE = re.compile(r"\d{17}[\dXx×Ｘｘ]")
_DATE_RE = re.compile(r"(\d{4})\D{0,3}?(\d{1,2})\D{1,3}?(\d{1,2})")


@dataclass(frozen=True)
class Row:
    text: str  # the row's lines joined left to right, spaces removed
    lines: tuple[TextLine, ...]
    y: float  # deskewed centre, for ordering


def _angle(lines: Sequence[TextLine]) -> float:
    """Median slope (radians) of the top edges of wide boxes: the card's tilt."""
    slopes = []
    for ln in lines:
        if len(ln.box) != 4:
            continue
        (x0, y0), (x1, y1) = ln.box[0], ln.box[1]
        if x1 - x0 > 2 * max(ln.height, 1.0) * 0.5:
            slopes.append(math.atan2(y1 - y0, x1 - x0))
    if not slopes:
        return 0.0
    slopes.sort()
    return slopes[len(slopes) // 2]


def rows_of(lines: Sequence[TextLine]) -> list[Row]:
    """Group lines into rows: lines whose deskewed vertical extents overlap by half."""
    if not lines:
        return []
    a = -_angle(lines)
    cos, sin = math.cos(a), math.sin(a)

    def deskew(ln: TextLine) -> tuple[float, float, float, float]:
        cx = (ln.x0 + ln.x1) / 2
        cy = ln.cy
        x = cx * cos - cy * sin
        y = cx * sin + cy * cos
        half = ln.height * abs(cos) / 2
        return x, y, y - half, y + half

    placed = sorted(((deskew(ln), ln) for ln in lines), key=lambda t: t[0][1])
    groups: list[list[tuple[tuple[float, float, float, float], TextLine]]] = []
    for item in placed:
        (_, _, top, bottom) = item[0]
        if groups:
            last = groups[-1]
            l_top = sum(g[0][2] for g in last) / len(last)
            l_bot = sum(g[0][3] for g in last) / len(last)
            overlap = min(bottom, l_bot) - max(top, l_top)
            if overlap > 0.5 * min(bottom - top, l_bot - l_top):
                last.append(item)
                continue
        groups.append([item])
    rows = []
    for g in groups:
        g.sort(key=lambda t: t[0][0])
        text = "".join(re.sub(r"\s+", "", t[1].text) for t in g)
        rows.append(Row(text, tuple(t[1] for t in g), sum(t[0][1] for t in g) / len(g)))
    return rows


def _after(text: str, label: str) -> str | None:
    """The text after `label` if the row carries it (tolerating one misread label character
    at the start of a row for two-character labels)."""
    i = text.find(label)
    if i >= 0:
        return text[i + len(label) :]
    if len(label) == 2 and len(text) > 2 and (text[0] == label[0] or text[1] == label[1]):
        # "性剐男": first character right, second misread. Only at the row start, where the
        # label is printed, so a value containing one of the characters is not cut.
        return text[2:]
    return None


def _clean(value: str) -> str:
    return value.strip(" :：,，.。")


def _birth(text: str) -> tuple[int, int, int] | None:
    m = _DATE_RE.search(text)
    if not m:
        return None
    return int(m[1]), int(m[2]), int(m[3])


def parse_front(lines: Sequence[TextLine]) -> IdCardFields:
    """Fields of the photo side (人像面). Missing fields stay None."""
    from datetime import date

    rows = rows_of(lines)
    name = sex = ethnicity = address = id_number = None
    birth: date | None = None
    address_rows: list[str] = []
    in_address = False
    for row in rows:
        t = row.text
        m = _ID_RE.search(t)
        if m and ("号码" in t or "身份" in t or len(t) - len(m[0]) <= 2 or id_number is None):
            id_number = normalize_id_number(m[0])
            in_address = False
            continue
        if "公民身份" in t or "号码" in t:
            in_address = False
            continue
        if t.startswith("姓名") or (
            name is None and _after(t, "姓名") is not None and t[:1] == "姓"
        ):
            value = _clean(_after(t, "姓名") or "")
            name = value or None
            continue
        if "性别" in t or "民族" in t or (sex is None and t[:1] == "性"):
            s = _after(t, "性别")
            if s is not None:
                sex_part = s.split("民族")[0]
                for ch in sex_part:
                    if ch in "男女":
                        sex = ch
                        break
            e = t.split("民族", 1)[1] if "民族" in t else None
            if e is None:
                # "民" or "族" misread: the ethnic group follows the last label-like character.
                tail = re.sub(r"^.*?[男女]", "", t)
                e = tail[2:] if len(tail) > 2 else None
            if e is not None:
                e = _clean(e)
                ethnicity = e if e in ETHNIC_GROUPS else (e or None)
            continue
        if t.startswith("出生") or (birth is None and t[:1] in "出生" and _birth(t)):
            ymd = _birth(t)
            if ymd:
                try:
                    birth = date(*ymd)
                except ValueError:
                    birth = None
            continue
        if t.startswith("住址") or (address is None and t[:2] in ("住趾", "往址", "佳址")):
            address_rows = [_clean(t[2:])]
            in_address = True
            continue
        if in_address:
            address_rows.append(_clean(t))
    if address_rows:
        address = "".join(address_rows) or None
    return IdCardFields(
        name=name,
        sex=sex,
        ethnicity=ethnicity,
        birth_date=birth,
        address=address,
        id_number=id_number,
    )


def _validity_text(t: str) -> str:
    value = _clean(t)
    digits = re.sub(r"\D", "", value)
    if "长期" in value and len(digits) >= 8:
        d = digits[:8]
        return f"{d[:4]}.{d[4:6]}.{d[6:8]}-长期"
    if len(digits) == 16:
        # The separators are what OCR drops most often; the digits are what the card says.
        d = digits
        return f"{d[:4]}.{d[4:6]}.{d[6:8]}-{d[8:12]}.{d[12:14]}.{d[14:16]}"
    return value


def parse_back(lines: Sequence[TextLine]) -> IdCardFields:
    """Fields of the emblem side (国徽面): issuing authority and validity period."""
    authority = validity_text = None
    for row in rows_of(lines):
        t = row.text
        if "签发机关" in t or t.startswith(("签发", "发机关")):
            v = _clean(t.split("机关", 1)[1] if "机关" in t else t[4:])
            authority = v or None
        elif "有效期" in t or t.startswith("效期限") or re.search(r"\d{4}\.\d{2}\.\d{2}", t):
            v = t.split("期限", 1)[1] if "期限" in t else re.sub(r"^[^\d]*", "", t)
            validity_text = _validity_text(v) or None
    validity = parse_validity(validity_text) if validity_text else None
    return IdCardFields(
        issuing_authority=authority,
        valid_from=validity.start if validity else None,
        valid_until=validity.end if validity else None,
        valid_long_term=bool(validity and validity.long_term),
        validity_text=validity_text,
    )


def side_of(lines: Sequence[TextLine]) -> Side | None:
    """'front', 'back' or None, from the labels present."""
    text = "".join(re.sub(r"\s+", "", ln.text) for ln in lines)
    front = sum(k in text for k in ("姓名", "性别", "民族", "出生", "住址", "公民身份号码"))
    back = sum(k in text for k in ("签发机关", "有效期限", "居民身份证", "中华人民共和国"))
    if front == back == 0:
        return None
    return "front" if front >= back else "back"
