"""The staff pages' texts (web/common/i18n.js): every error code and check the server answers the
pages with has its words in both languages, so no English server text shows among Chinese."""

from __future__ import annotations

import re
from collections.abc import Iterator
from inspect import isclass
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from server.api import bodies
from server.errors import Rule

I18N = Path(__file__).parents[2] / "web" / "common" / "i18n.js"
# A text: '...' with \' escapes, or "..." (one line each).
TEXT = re.compile(
    r"""^  '([\w.]+)': (?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"),?$""", re.MULTILINE
)


def _texts() -> dict[str, dict[str, str]]:
    text = I18N.read_text("utf-8")
    zh, en = text.split("\nconst en = {", 1)
    return {
        lang: {key: single or double for key, single, double in TEXT.findall(part)}
        for lang, part in (("zh-CN", zh), ("en", en))
    }


@pytest.mark.parametrize(
    "key",
    [
        "error.ticket_lost",
        "error.capacity_full",
        "error.signature_not_in_recording",
        "error.recording_not_stored",
        "error.recording_not_verified",
        "error.archive_unavailable",
        # The checks preview's reading of the sealed recording (its failing reasons are the
        # error codes above).
        "tx.check.recording_signature",
        "tx.reason.bound",
        # The customer's link to an appointment cancelled because its teller was disabled.
        "join.session_cancelled",
    ],
)
def test_the_workflow_answers_are_worded_in_both_languages(key: str) -> None:
    for lang, texts in _texts().items():
        assert key in texts, f"{key} is missing from the {lang} texts of {I18N}"


def _customer_text(texts: dict[str, str], code: str) -> str:
    """What the customer's pages show for an error code (errorKey in web/common/ui.js)."""
    for key in (f"customerError.{code}", f"error.{code}"):
        if key in texts:
            return texts[key]
    return texts["error.generic"]


def test_both_languages_have_the_same_texts() -> None:
    keys = {lang: set(texts) for lang, texts in _texts().items()}
    assert keys["zh-CN"] == keys["en"], keys["zh-CN"] ^ keys["en"]


@pytest.mark.parametrize(
    ("code", "not_said"),
    [
        # The customer's credential (a day long) ran out, e.g. on a page left open overnight:
        # customers never log in, a new link is what helps.
        ("not_authenticated", ("登录", "log in", "login", "sign in")),
        # The teller decided the transaction while the customer signed it: reloading the call
        # page helps nothing (and the lobby asks them not to), nothing is left for them to do.
        ("wrong_state", ("刷新", "reload")),
        # The audit log is the bank's, and its operators are not the customer's to call.
        ("audit_unavailable", ("审计", "运维", "audit", "operat")),
    ],
)
def test_customers_are_not_told_what_only_staff_can_do(
    code: str, not_said: tuple[str, ...]
) -> None:
    for lang, texts in _texts().items():
        shown = _customer_text(texts, code)
        assert shown != texts["error.generic"], f"{code}: no words of its own in {lang}"
        for words in not_said:
            assert words not in shown.lower(), f"{code} tells the customer {shown!r} ({lang})"


# The requests the teller's call panels send (web/common/recording.js, identity.js) that the
# server refuses with `out_of_order` when the call is not in the state for them (the customer
# left, the recording stopped, the verification moved on): the refusal's `ref` picks the words
# (errorKey in web/common/ui.js). `recording_stop` is never refused so.
REFUSABLE_REQUESTS = (
    "recording_start",
    "mark",
    "identity_start",
    "identity_step",
    "identity_manual",
)
PANELS = ("recording.js", "identity.js")


def test_every_request_of_the_teller_panels_is_accounted_for() -> None:
    sent = {
        request
        for panel in PANELS
        for request in re.findall(r"#send\('([a-z_]+)'", (I18N.parent / panel).read_text("utf-8"))
    }
    assert sent - {"recording_stop"} == set(REFUSABLE_REQUESTS)


@pytest.mark.parametrize(
    "key",
    [f"error.out_of_order.{request}" for request in REFUSABLE_REQUESTS]
    # The supervisor's deliveries panel: sending a delivery again that another supervisor just
    # sent, or with no core bank configured.
    + ["error.delivery_not_failed", "error.webhook_disabled", "error.unknown_delivery"]
    # The call page's sales script, when the bank's scripts directory holds a broken one.
    + ["error.unknown_script"]
    # The supervisor's staff accounts, acted on by another supervisor at the same time.
    + ["error.already_disabled", "error.not_disabled", "error.unknown_user"]
    # Any action of any page when the audit log cannot be written (docs/audit-log.md).
    + ["error.audit_unavailable", "customerError.audit_unavailable"],
)
def test_refusals_on_the_staff_pages_are_worded_in_both_languages(key: str) -> None:
    for lang, texts in _texts().items():
        assert key in texts, f"{key} is missing from the {lang} texts of {I18N}"


# The bodies the pages' forms send (server/api/bodies.py): all but NewUserBody and
# NewPasswordBody, which only `vteller admin` and API clients send.
FORM_BODIES = (
    bodies.LoginBody,
    bodies.InvitationBody,
    bodies.ExpertBody,
    bodies.ReviewBody,
    bodies.ArchiveSearchBody,
    bodies.LegalHoldBody,
    bodies.QueueJoinBody,
    bodies.CallbackBody,
    bodies.TellerStatusBody,
    bodies.TellerSkillsBody,
    bodies.AssignBody,
    bodies.TransactionBody,
    bodies.OverrideBody,
    bodies.RejectBody,
    bodies.DisableAccountBody,
    # Not a body: the query string of the auditor's list of sessions never recorded, from its
    # filters (refused the same way).
    bodies.UnrecordedSessionsQuery,
)
CJK = re.compile(r"[\u4e00-\u9fff]")


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[str]:
    """The `field` of a refusal of each of the model's fields, as its path in the body: an
    object's fields, and those of each member of a tagged union, by their own paths."""
    for name, info in model.model_fields.items():
        kinds = get_args(info.annotation) or (info.annotation,)
        members = [kind for kind in kinds if isclass(kind) and issubclass(kind, BaseModel)]
        if not members:
            yield ".".join((*prefix, name))
        for member in members:
            yield from _fields(member, (*prefix, name))


FORM_FIELDS = frozenset(field for model in FORM_BODIES for field in _fields(model))


def test_every_refused_field_of_the_pages_forms_is_worded_in_both_languages() -> None:
    """Each field a form's body has, with each rule, reads as a sentence of the page's language
    (invalidMessage in web/common/ui.js): the field's name and the rule's words, or the
    field's own words for that rule; never the server's English among Chinese."""
    fields = FORM_FIELDS
    # Refused outside pydantic (server/workflow/transactions/service.py, the auditor's search):
    # fields of these bodies too.
    assert {"transaction.amount.currency", "transaction.amount.minor", "id_number"} <= fields
    rules = {rule.value for rule in Rule}
    for lang, texts in _texts().items():
        unnamed = sorted(field for field in fields if f"field.{field}" not in texts)
        assert not unnamed, f"no field.<name> in the {lang} texts for {unnamed}"
        unworded = sorted(rule for rule in rules if f"invalid.{rule}" not in texts)
        assert not unworded, f"no invalid.<rule> in the {lang} texts for {unworded}"
        sentences = {key: text for key, text in texts.items() if key.startswith("invalid.")}
        assert "{" not in sentences.pop("invalid.generic")
        for key, text in sentences.items():
            assert "{field}" in text, (lang, key, text)
            own = key.removeprefix("invalid.")
            if "." in own:  # a field's own words for a rule
                field, rule = own.rsplit(".", 1)
                assert field in fields and rule in rules, f"{key}: no such field or rule"
        if lang == "zh-CN":
            names = {key: text for key, text in texts.items() if key.startswith("field.")}
            shown = sentences | names
            english = sorted(key for key, text in shown.items() if not CJK.search(text))
            assert not english, english


def test_every_input_marked_with_a_field_names_one_of_the_forms_fields() -> None:
    """`data-field` (HTML) and `dataset.field` (scripts) say which API field an input is for:
    the input a refusal of that field marks (showErrorText in web/common/ui.js)."""
    fields = FORM_FIELDS
    marked = {
        field
        for page in I18N.parents[1].rglob("*.*")
        if page.suffix in (".html", ".js")
        for field in re.findall(
            r"""data-field="([\w.]+)"|dataset\.field = '([\w.]+)'""", page.read_text("utf-8")
        )
    }
    found = {html or script for html, script in marked}
    assert {"transaction.amount.minor", "customer_name", "reason", "note"} <= found
    assert found <= fields, found - fields
