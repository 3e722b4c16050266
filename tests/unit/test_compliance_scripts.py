"""Sales scripts: the built-in ones load, and broken ones fail with a message naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from compliance.sales_script import (
    STANDARD_MOMENTS,
    ScriptError,
    available_scripts,
    load_script,
    load_script_file,
    parse_script,
    render,
)

BUILT_IN = [
    "bank_agent_life_insurance",
    "bank_wealth_product",
    "general_service",
    "investment_linked_insurance",
]


def _minimal(**overrides: object) -> dict[str, object]:
    script: dict[str, object] = {
        "id": "demo",
        "version": "1",
        "title": "演示",
        "placeholders": {"teller_name": "柜员姓名"},
        "moments": [
            {
                "id": "consent",
                "title": "同意",
                "lines": [
                    {"speaker": "teller", "say": ["我是{teller_name}，本次通话将录音录像。"]},
                    {"speaker": "customer", "say": ["我同意", "是的"]},
                ],
            }
        ],
    }
    script.update(overrides)
    return script


def test_built_in_scripts_load_and_cover_the_standard_moments() -> None:
    assert sorted(available_scripts()) == BUILT_IN
    for name in BUILT_IN:
        script = load_script(name)
        ids = [m.id for m in script.moments]
        assert set(ids) <= set(STANDARD_MOMENTS)
        assert ids == [m for m in STANDARD_MOMENTS if m in ids], "moments keep the page's order"
        assert ids[0] == "consent" and ids[-1] == "closing"
    sale = load_script("bank_wealth_product")
    assert [m.id for m in sale.moments] == list(STANDARD_MOMENTS)
    consent = sale.moment("consent").line("teller").say[0]
    assert "保护您的合法权益" in consent and "录音录像" in consent
    assert "保本" in sale.forbidden and "稳赚" in sale.forbidden
    assert sale.moment("signature").signature_captured
    assert sale.moment("customer_identity").visible.customers == 1


def test_forbidden_phrases_apply_to_teller_lines_only() -> None:
    sale = load_script("bank_wealth_product")
    moment = sale.moment("voluntary_confirmation")
    assert "保本" in sale.forbidden_for(moment.line("teller"))
    customer = sale.forbidden_for(moment.line("customer"))
    assert "保本" not in customer and "考虑一下" in customer


def test_render_fills_placeholders_and_names_missing_ones() -> None:
    assert render("我是{teller_name}", {"teller_name": "王芳"}) == "我是王芳"
    with pytest.raises(ScriptError, match=r"\{teller_name\}.*--set"):
        render("我是{teller_name}", {})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"moments": []}, "moments"),
        ({"id": "Bad Id"}, "id"),
        ({"placeholders": {}}, r"placeholder \{teller_name\} is not declared"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_scripts_are_rejected_with_the_field(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ScriptError, match=message):
        parse_script(_minimal(**change), "demo.yaml")


def test_invalid_lines_and_moments() -> None:
    data = _minimal()
    moments = data["moments"]
    assert isinstance(moments, list)
    duplicate = [moments[0], moments[0]]
    with pytest.raises(ScriptError, match="duplicate moment ids: consent"):
        parse_script(_minimal(moments=duplicate), "demo.yaml")
    bad_speaker = [{"id": "consent", "title": "t", "lines": [{"speaker": "expert", "say": ["好"]}]}]
    with pytest.raises(ScriptError, match=r"moments\.0\.lines\.0\.speaker"):
        parse_script(_minimal(moments=bad_speaker), "demo.yaml")
    two_tellers = [
        {
            "id": "consent",
            "title": "t",
            "lines": [{"speaker": "teller", "say": ["甲"]}, {"speaker": "teller", "say": ["乙"]}],
        }
    ]
    with pytest.raises(ScriptError, match="2 teller lines"):
        parse_script(_minimal(moments=two_tellers), "demo.yaml")
    too_long = [
        {"id": "consent", "title": "t", "lines": [{"speaker": "teller", "say": ["很" * 121]}]}
    ]
    with pytest.raises(ScriptError, match="split it into several moments"):
        parse_script(_minimal(moments=too_long), "demo.yaml")
    empty = [{"id": "consent", "title": "t", "lines": [{"speaker": "customer", "say": []}]}]
    with pytest.raises(ScriptError, match=r"say"):
        parse_script(_minimal(moments=empty), "demo.yaml")


def test_unknown_moment_and_speaker_are_clear() -> None:
    sale = load_script("bank_wealth_product")
    with pytest.raises(ScriptError, match=r"no moment 'nope'.*consent"):
        sale.moment("nope")
    with pytest.raises(ScriptError, match="no customer line"):
        sale.moment("closing").line("customer")
    with pytest.raises(ScriptError, match="no script 'nope'; available"):
        load_script("nope")


def test_a_configured_directory_overrides_built_in_scripts(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "bank_wealth_product.yaml").write_text(
        yaml.safe_dump(_minimal(id="bank_wealth_product", version="bank-7"), allow_unicode=True),
        encoding="utf-8",
    )
    (tmp_path / "own.yaml").write_text(
        yaml.safe_dump(_minimal(id="own"), allow_unicode=True), encoding="utf-8"
    )
    assert load_script("bank_wealth_product", tmp_path).version == "bank-7"
    assert load_script("general_service", tmp_path).id == "general_service"
    assert "own" in available_scripts(tmp_path)
    with pytest.raises(ScriptError, match="does not exist"):
        available_scripts(tmp_path / "missing")


def test_file_name_must_match_id_and_yaml_errors_name_the_file(tmp_path: Path) -> None:
    import yaml

    wrong = tmp_path / "other.yaml"
    wrong.write_text(yaml.safe_dump(_minimal(), allow_unicode=True), encoding="utf-8")
    with pytest.raises(ScriptError, match="differs from the file name"):
        load_script_file(wrong)
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n", encoding="utf-8")
    with pytest.raises(ScriptError, match=r"broken\.yaml"):
        load_script_file(broken)
