"""Upload limits and the card parser on hand-made OCR lines (no model needed)."""

from __future__ import annotations

import io
import zlib
from datetime import date

import numpy as np
import pytest
from PIL import Image

from server.identity.images import ImageInputError, ImageLimits, check_array, decode_image
from server.identity.models import ModelError, PinnedModel, verified, verify_file
from server.identity.ocr import TextLine
from server.identity.ocr.parse import parse_back, parse_front, rows_of, side_of


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_decodes_to_bgr() -> None:
    arr = decode_image(_png(100, 80))
    assert arr.shape == (80, 100, 3) and arr.dtype == np.uint8
    assert tuple(arr[0, 0]) == (10, 10, 200)  # BGR


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 not an image", "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "not_an_image"),
    ],
)
def test_rejects_non_images(data: bytes, code: str) -> None:
    with pytest.raises(ImageInputError) as err:
        decode_image(data)
    assert err.value.code == code
    assert err.value.message_zh and "upload" in err.value.message_en


def test_rejects_wrong_type() -> None:
    with pytest.raises(ImageInputError) as err:
        decode_image("a string")  # type: ignore[arg-type]
    assert err.value.code == "wrong_type"
    with pytest.raises(ImageInputError):
        check_array(np.zeros((10, 10), np.float32))


def test_rejects_too_many_bytes() -> None:
    with pytest.raises(ImageInputError) as err:
        decode_image(_png(100, 100), ImageLimits(max_bytes=100))
    assert err.value.code == "too_large"


def test_rejects_gif_and_tiny() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, "GIF")
    with pytest.raises(ImageInputError) as err:
        decode_image(buf.getvalue())
    assert err.value.code == "unsupported_format"
    with pytest.raises(ImageInputError) as err:
        decode_image(_png(20, 20))
    assert err.value.code == "too_small"


def test_decodes_multi_picture_jpeg() -> None:
    """Android's Ultra HDR photos and many phones' depth shots are JPEGs with a second picture
    (Pillow calls them MPO): the customer uploaded a JPEG, and its primary picture is read."""
    buf = io.BytesIO()
    primary = Image.new("RGB", (120, 90), (200, 10, 10))
    primary.save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (60, 45))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    arr = decode_image(buf.getvalue())
    assert arr.shape == (90, 120, 3)
    assert abs(int(arr[45, 60, 2]) - 200) < 8 and int(arr[45, 60, 0]) < 30  # red, in BGR


def test_decodes_16_bit_greyscale() -> None:
    """A scanner's 16-bit greyscale PNG keeps its tones instead of turning white."""
    ramp = np.tile(np.linspace(0, 65535, 100).astype(np.uint16), (80, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    arr = decode_image(buf.getvalue())
    assert arr.shape == (80, 100, 3)
    assert tuple(arr[0, 0]) == (0, 0, 0)
    assert 120 <= int(arr[0, 50, 0]) <= 135 and arr[0, 50, 0] == arr[0, 50, 2]
    assert int(arr[0, 99, 0]) == 255


def _bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header claiming w x h, with a tiny (truncated) body: a decode bomb is
    refused from its header alone, before any pixel is decoded."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_rejects_decode_bomb_from_header() -> None:
    data = _bomb_png(30000, 30000)  # 900 MP declared in a few hundred bytes
    assert len(data) < 2000
    with pytest.raises(ImageInputError) as err:
        decode_image(data)
    assert err.value.code == "too_many_pixels"
    data = _bomb_png(6000, 5000)  # 30 MP: under Pillow's limit, over ours
    assert len(data) < 2000
    with pytest.raises(ImageInputError) as err:
        decode_image(data)
    assert err.value.code == "too_many_pixels"


def test_model_digest_mismatch_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "m.onnx"
    f.write_bytes(b"not the model")
    with pytest.raises(ModelError, match="SHA-256"):
        verify_file(f, "0" * 64)
    with pytest.raises(ModelError, match="not installed"):
        verified(PinnedModel("no_such_package_xyz", "m.onnx", "0" * 64, "x"))


def L(text: str, x0: float, y0: float, x1: float, y1: float) -> TextLine:
    return TextLine(text, ((x0, y0), (x1, y0), (x1, y1), (x0, y1)), 0.99)


FRONT_LINES = [
    L("公民身份号码", 207, 693, 404, 735),
    L("110105198507121231", 459, 694, 896, 739),
    L("姓名", 204, 232, 281, 278),
    L("张伟", 321, 228, 412, 280),
    L("性别", 203, 307, 284, 357),
    L("男", 323, 307, 373, 356),
    L("民族汉", 464, 304, 628, 360),
    L("出生", 205, 386, 281, 432),
    L("1985年7 月12日", 324, 385, 653, 430),
    L("住址", 203, 458, 285, 509),
    L("北京市朝阳区建国路88号", 328, 464, 731, 505),
    L("院3号楼2单元1101号", 327, 511, 671, 556),
]


def test_parse_front_from_shuffled_lines() -> None:
    f = parse_front(FRONT_LINES)
    assert f.name == "张伟"
    assert f.sex == "男"
    assert f.ethnicity == "汉"
    assert f.birth_date == date(1985, 7, 12)
    assert f.address == "北京市朝阳区建国路88号院3号楼2单元1101号"
    assert f.id_number == "110105198507121231"
    assert side_of(FRONT_LINES) == "front"


def test_parse_front_merged_labels_and_tilt() -> None:
    # Label and value in one line, and every box shifted down by 8 % of x (a ~5 degree tilt).
    def tilt(ln: TextLine) -> TextLine:
        return TextLine(ln.text, tuple((x, y + 0.08 * x) for x, y in ln.box), ln.score)

    lines = [
        L("姓名张伟", 204, 232, 412, 280),
        L("性别男", 203, 307, 373, 357),
        L("民族", 464, 304, 540, 360),
        L("汉", 560, 304, 600, 360),
        L("出生1985年7月12日", 205, 385, 653, 432),
        L("住址北京市朝阳区建国路88号", 203, 458, 731, 509),
        L("院3号楼2单元1101号", 327, 511, 671, 556),
        L("公民身份号码110105198507121231", 207, 693, 896, 739),
    ]
    f = parse_front([tilt(ln) for ln in lines])
    assert (f.name, f.sex, f.ethnicity) == ("张伟", "男", "汉")
    assert f.address == "北京市朝阳区建国路88号院3号楼2单元1101号"
    assert f.id_number == "110105198507121231"


def test_parse_front_full_width_number() -> None:
    # The recogniser may return full-width digits and Ｘ: the field holds the ASCII number.
    number = "".join(chr(ord(c) + 0xFEE0) for c in "11010519491231002X")
    lines = [L(number, 459, 694, 896, 739) if ln is FRONT_LINES[1] else ln for ln in FRONT_LINES]
    assert parse_front(lines).id_number == "11010519491231002X"


def test_rows_group_same_line() -> None:
    rows = rows_of(FRONT_LINES)
    assert [r.text for r in rows][:2] == ["姓名张伟", "性别男民族汉"]


def test_parse_back_variants() -> None:
    lines = [
        L("中华人民共和国", 481, 248, 857, 315),
        L("居民身份证", 484, 342, 849, 421),
        L("签发机关", 301, 600, 441, 646),
        L("北京市公安局朝阳分局", 465, 600, 836, 645),
        L("有效期限", 300, 685, 441, 731),
        L("2018.04.20-2038.04.20", 465, 686, 849, 727),
    ]
    b = parse_back(lines)
    assert b.issuing_authority == "北京市公安局朝阳分局"
    assert (b.valid_from, b.valid_until) == (date(2018, 4, 20), date(2038, 4, 20))
    assert side_of(lines) == "back"
    # The dash dropped by OCR, and the long-term form.
    lines[-1] = L("2018.04.202038.04.20", 465, 686, 849, 727)
    assert parse_back(lines).valid_until == date(2038, 4, 20)
    lines[-1] = L("2012.09.03-长期", 465, 686, 849, 727)
    b = parse_back(lines)
    assert b.valid_long_term and b.valid_until is None


def test_parse_nothing() -> None:
    assert parse_front([]).name is None
    assert parse_back([]).issuing_authority is None
    assert side_of([L("hello", 0, 0, 10, 10)]) is None
