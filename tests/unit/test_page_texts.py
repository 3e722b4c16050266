"""The staff pages' texts (web/common/i18n.js): every error code and check the server answers the
pages with has its words in both languages, so no English server text shows among Chinese."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
    # Any action of any page when the audit log cannot be written (docs/audit-log.md).
    + ["error.audit_unavailable", "customerError.audit_unavailable"],
)
def test_refusals_on_the_staff_pages_are_worded_in_both_languages(key: str) -> None:
    for lang, texts in _texts().items():
        assert key in texts, f"{key} is missing from the {lang} texts of {I18N}"
