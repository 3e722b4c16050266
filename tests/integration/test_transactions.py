"""Transactions: the teller creates, the customer signs (into the recording), the server's
approval rules decide, four eyes above the threshold, a supervisor overrides with a reason, and
the signed approval record binds the transaction to the sealed archive."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from typing import Any

import pytest
from PIL import Image, ImageDraw
from sqlalchemy import select, update

from recorder.seal.keyring import LocalKeyring
from recorder.seal.manifest import parse_manifest
from recorder.seal.signing import load_public_keys
from recorder.store.s3 import ArchiveBucket, S3Archive
from recorder.verify import iter_plaintext
from server.audit.log import AuditUnavailable
from server.auth.principal import Principal, Role
from server.db.models import (
    Archive,
    AuditEntry,
    ComplianceReport,
    ComplianceReview,
    Transaction,
    User,
)
from server.errors import ApiError
from server.workflow.transactions.approvals import verify_approval
from server.workflow.webhooks.records import approval_event
from tests.integration.test_call import _expert_bot, _teller_and_customer
from tests.integration.test_recording import _record, _sealed, _vteller
from tests.support.bot import Bot
from tests.support.server import ApiClient, RunningServer

ACCOUNT = "6222020200112233445"


def signature_png(width: int = 900, height: int = 360, ink: bool = True) -> bytes:
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    if ink:
        draw = ImageDraw.Draw(image)
        draw.line([(60, 250), (200, 80), (330, 260), (520, 90), (800, 240)], fill="black", width=8)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def purchase(minor: int, product_type: str = "wealth") -> dict[str, Any]:
    return {
        "transaction": {
            "kind": "purchase",
            "product_type": product_type,
            "product_code": "WM-2026-088",
            "product_name": "稳健理财88号",
            "amount": {"minor": minor, "currency": "CNY"},
            "account": ACCOUNT,
        }
    }


async def sign(client: ApiClient, transaction_id: str, png: bytes, expect: int = 200) -> Any:
    async with client.http.post(
        f"{client.base}/api/v1/transactions/{transaction_id}/signature",
        data=png,
        headers={"Content-Type": "image/png", "X-CSRF-Token": client.csrf},
    ) as response:
        body = await response.json()
        assert response.status == expect, (response.status, body)
        return body


async def _transaction_message(bot: Bot, transaction_id: str, state: str) -> dict[str, Any]:
    while True:
        message = await bot.expect("transaction")
        if message["transaction"]["id"] == transaction_id and (
            message["transaction"]["state"] == state
        ):
            return dict(message["transaction"])


async def _approve(client: ApiClient, transaction_id: str, expect: int = 200) -> Any:
    return await client.call(
        "POST", f"/api/v1/transactions/{transaction_id}/approve", {}, expect=expect
    )


def _failing(refused: dict[str, Any]) -> set[str]:
    assert refused["error"]["code"] == "checks_failed"
    assert all(c["message"] for c in refused["failing"])  # each says what to do
    return {c["reason"] for c in refused["failing"]}


async def _report(
    server: RunningServer, archive_id: str, session_id: str, decision: str, reviews: list[str]
) -> list[int]:
    """The after-call analysis' result, written as the analysis job writes it (the analysis
    itself is test_compliance_jobs.py's subject)."""
    async with server.services.sessions._db() as db, db.begin():
        await db.merge(
            ComplianceReport(
                archive_id=archive_id,
                session_id=session_id,
                state="done",
                stage="done",
                progress=1000,
                decision=decision,
                report_object="report-001.json",
                report_sha256="ab" * 32,
            )
        )
        rows = [
            ComplianceReview(archive_id=archive_id, session_id=session_id, moment=m, reasons=[])
            for m in reviews
        ]
        db.add_all(rows)
    return [r.id for r in rows]


async def _hold_signature(server: RunningServer, transaction_id: str, sha256: str) -> None:
    """Set the signature hash the row holds, as if it had come apart from the recording's."""
    async with server.services.sessions._db() as db, db.begin():
        await db.execute(
            update(Transaction)
            .where(Transaction.id == transaction_id)
            .values(signature_sha256=sha256)
        )


async def _recording_signature(client: ApiClient, transaction_id: str) -> tuple[bool, str]:
    """(passed, reason) of the detail's recording_signature check."""
    detail = await client.call("GET", f"/api/v1/transactions/{transaction_id}")
    [check] = [c for c in detail["transaction"]["checks"] if c["check"] == "recording_signature"]
    return check["passed"], check["reason"]


async def _staff(server: RunningServer, username: str, role: Role) -> ApiClient:
    await server.user(username, role)
    client = server.client()
    await client.login(username)
    return client


async def test_signed_in_the_recording_approved_by_rule_by_four_eyes_and_override(
    server: RunningServer,
) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    teller_http, customer_http = teller.client, customer.client
    supervisor = await _staff(server, "boss", Role.SUPERVISOR)
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        path = f"/api/v1/sessions/{session_id}/transactions"
        big = (await teller_http.call("POST", path, purchase(6_000_000), expect=201))["transaction"]
        small = (await teller_http.call("POST", path, purchase(1_000_000), expect=201))[
            "transaction"
        ]
        third = (await teller_http.call("POST", path, purchase(20_000, "insurance"), expect=201))[
            "transaction"
        ]
        assert big["state"] == "awaiting_signature" and big["needs_second_approval"]
        assert not small["needs_second_approval"]
        assert big["transaction"]["amount"] == {"minor": 6_000_000, "currency": "CNY"}
        # The customer's page is told, with the account masked.
        shown = await _transaction_message(customer, big["id"], "awaiting_signature")
        assert shown["transaction"]["account"] == "****" + ACCOUNT[-4:]
        assert ACCOUNT not in json.dumps(shown)

        # Signed before anything was recorded: "trade first, record later" is impossible.
        await sign(customer_http, big["id"], signature_png())
        assert (await _transaction_message(teller, big["id"], "signed"))["signature"]["sha256"]
        refused = await _approve(teller_http, big["id"], expect=409)
        assert _failing(refused) == {
            "identity_missing",
            "not_signed_while_recording",
            "report_pending",
        }
        detail = await teller_http.call("GET", f"/api/v1/transactions/{big['id']}")
        assert detail["transaction"]["state"] == "signed"  # a recording cannot be overridden
        await supervisor.call(
            "POST",
            f"/api/v1/transactions/{big['id']}/override",
            {"reason": "客户急需办理，请先放行，事后补录"},
            expect=409,
        )

        # Identity, verified manually by the teller after the customer declines face recognition.
        await teller.send({"type": "identity_start"})
        await customer.expect("identity_consent_request")
        await customer.send({"type": "identity_consent", "granted": False})
        while (await teller.expect("identity"))["state"] != "manual_required":
            pass
        await teller.send(
            {"type": "identity_manual", "decision": "pass", "reason": "核对身份证原件，人证一致"}
        )
        while (await teller.expect("identity"))["state"] != "verified_manually":
            pass

        started = await _record(server, teller, customer)
        archive_id = str(started["archive_id"])
        for transaction in (big, small, third):
            await sign(customer_http, transaction["id"], signature_png())
        refused = await _approve(teller_http, small["id"], expect=409)
        assert _failing(refused) == {"recording_running", "report_pending"}
        await teller.send({"type": "recording_stop"})
        assert (await _sealed(teller))["state"] == "sealed"
    finally:
        await customer.close()
        await teller.close()

    # Every decision reads the sealed manifest from the archive store (there by now in service:
    # the analysis waits for it too); a row holding a signature the manifest does not bind is
    # refused, whatever the row says.
    await server.services.rooms._recorder.uploader.flush(timeout=30)
    assert await _recording_signature(teller_http, small["id"]) == (True, "bound")
    await _hold_signature(server, small["id"], "ee" * 32)
    refused = await _approve(teller_http, small["id"], expect=409)
    assert refused["error"]["code"] == "signature_not_in_recording"
    assert archive_id in refused["error"]["message"]
    # The page's checks preview shows it before anyone presses approve.
    preview = await _recording_signature(teller_http, small["id"])
    assert preview == (False, "signature_not_in_recording")
    await _hold_signature(server, small["id"], hashlib.sha256(signature_png()).hexdigest())

    # Sealed, but the analysis has not reported: the compliance check is pending.
    refused = await _approve(teller_http, small["id"], expect=409)
    assert _failing(refused) == {"report_pending"}
    checks = {c["check"]: c["passed"] for c in refused["checks"]}
    assert checks == {
        "signature": True,
        "identity_passed": True,
        "recording_sealed": True,
        "compliance_passed": False,
    }

    # A failed report: only a supervisor's override with a written reason gets past it.
    await _report(server, archive_id, session_id, "fail", [])
    refused = await _approve(teller_http, third["id"], expect=409)
    assert _failing(refused) == {"report_failed"}
    queue = (await supervisor.call("GET", "/api/v1/transactions"))["transactions"]
    assert third["id"] in {t["id"] for t in queue}
    override = f"/api/v1/transactions/{third['id']}/override"
    short = await supervisor.call("POST", override, {"reason": "ok"}, expect=400)
    assert short["error"]["code"] == "reason_too_short"
    await teller_http.call("POST", override, {"reason": "x" * 40}, expect=403)
    reason = "风险揭示环节客户已明确表示理解，ASR 误判，已回看录像确认"
    overridden = await supervisor.call("POST", override, {"reason": reason})
    assert overridden["transaction"]["state"] == "approved"
    record = overridden["approval"]["record"]
    assert [d["step"] for d in record["decisions"]] == ["maker", "override"]
    assert record["decisions"][1]["reason"] == reason

    # Needs review: an open moment is not a pass until a supervisor approves it.
    [review] = await _report(server, archive_id, session_id, "needs_review", ["closing"])
    refused = await _approve(teller_http, big["id"], expect=409)
    assert _failing(refused) == {"review_open"}
    await supervisor.call(
        "POST", f"/api/v1/reviews/{review}", {"decision": "approved", "note": "已回看，完整"}
    )
    # Above the threshold: the teller's approval is the first of two.
    first = await _approve(teller_http, big["id"])
    assert first["transaction"]["state"] == "awaiting_second_approval"
    assert first["approval"] is None
    await _approve(teller_http, big["id"], expect=409)  # the maker cannot also be the checker
    # A teller promoted to supervisor is still the same person: four eyes refuse them.
    async with server.services.sessions._db() as db, db.begin():
        await db.execute(update(User).where(User.username == "teller1").values(role="supervisor"))
    promoted = server.client()
    await promoted.login("teller1")
    refused_self = await _approve(promoted, big["id"], expect=403)
    assert refused_self["error"]["code"] == "four_eyes"
    second = await _approve(supervisor, big["id"])
    assert second["transaction"]["state"] == "approved"

    # Within the threshold: the teller's approval is final.
    async with server.services.sessions._db() as db, db.begin():
        await db.execute(update(User).where(User.username == "teller1").values(role="teller"))
    done = await _approve(teller_http, small["id"])
    assert done["transaction"]["state"] == "approved"

    # The signed record binds the transaction to the sealed manifest and the report: the one
    # handed to the core bank (the supervisor's copy has the account masked).
    signed = approval_event(await server.services.transactions.get(big["id"]))
    assert second["approval"]["record"]["transaction"]["account"] == "****" + ACCOUNT[-4:]
    keys = load_public_keys(server.settings.data_dir / "keys" / "public")
    record = verify_approval(signed, keys)
    async with server.services.sessions._db() as db:
        archive = await db.get(Archive, archive_id)
    assert archive is not None and archive.status == "sealed"
    assert record["recording"] == {
        "archive_id": archive_id,
        "manifest_sha256": archive.manifest_sha256,
    }
    assert record["compliance"]["decision"] == "needs_review"
    assert record["transaction_sha256"] == big["sha256"]
    assert record["identity"] == {"decision": "pass", "method": "manual"}
    assert [d["step"] for d in record["decisions"]] == ["maker", "checker"]
    tampered = json.loads(json.dumps(signed))
    tampered["record"]["transaction"]["amount"]["minor"] = 600
    try:
        verify_approval(tampered, keys)
    except ValueError:
        pass
    else:
        raise AssertionError("a changed amount must not verify")

    # The manifest carries each transaction's hash and its signature image's hash.
    stored = S3Archive(ArchiveBucket.from_settings(server.settings.store), f"archives/{archive_id}")
    manifest = json.loads(await asyncio.to_thread(stored.read, "manifest.json"))
    bound = {t["id"]: t for t in manifest["transactions"]}
    assert set(bound) == {big["id"], small["id"], third["id"]}
    assert bound[big["id"]]["sha256"] == big["sha256"]
    assert bound[big["id"]]["signature_sha256"] == record["signature"]["image_sha256"]
    # And each signature image itself, encrypted with the recording's data key.
    attachments = manifest["attachments"]
    assert [a["object"] for a in attachments] == [
        "att-000000.bin",
        "att-000001.bin",
        "att-000002.bin",
    ]
    assert {a["plaintext_sha256"] for a in attachments} == {record["signature"]["image_sha256"]}
    keys_dir = server.settings.data_dir / "keys"
    verified = await _vteller(
        server.settings.data_dir,
        "verify",
        "--keyring",
        str(keys_dir / "keyring.json"),
        f"s3://{server.settings.store.bucket}/archives/{archive_id}",
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"transaction {big['id']}: signature image in att-" in verified.stdout
    parsed = parse_manifest(await asyncio.to_thread(stored.read, "manifest.json"))
    assert parsed.attachments is not None
    data_key = LocalKeyring.open(keys_dir / "keyring.json").unwrap(
        parsed.wrapped_key.to_wrapped(), parsed.archive_uuid
    )
    first = parsed.attachments[0]
    ciphertext = await asyncio.to_thread(stored.read, first.object)
    assert b"".join(iter_plaintext(parsed, first, ciphertext, data_key)) == signature_png()

    # The auditor portal shows each signature from the sealed archive, on the record.
    auditor = await _staff(server, "audit", Role.AUDITOR)
    opened = await auditor.call("GET", f"/api/v1/auditor/archives/{archive_id}")
    listed = {t["id"]: t for t in opened["manifest"]["transactions"]}
    assert listed[big["id"]]["image_in_archive"] is True
    from_archive = f"{server.url}/api/v1/auditor/archives/{archive_id}/signatures"
    async with auditor.http.get(f"{from_archive}/{big['id']}.png") as response:
        assert response.status == 200 and response.content_type == "image/png"
        assert await response.read() == signature_png()
    async with auditor.http.get(f"{from_archive}/t_unknown.png") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_signed_here"
    async with teller_http.http.get(f"{from_archive}/{big['id']}.png") as response:
        assert response.status == 403
    [logged] = [
        e
        for e in await server.services.audit.tail(100)
        if e.action == "auditor.signature_viewed" and e.detail.get("source") == "archive"
    ]
    assert (logged.target, logged.actor_role, logged.detail["archive_id"]) == (
        big["id"],
        "auditor",
        archive_id,
    )

    # The signature image is kept encrypted; staff see it, decrypted, through the API.
    image = await teller_http.http.get(
        f"{server.url}/api/v1/transactions/{big['id']}/signature.png"
    )
    assert image.status == 200 and await image.read() == signature_png()
    # Approved transactions are handed to the webhook delivery; the teller sees its status.
    detail = (await teller_http.call("GET", f"/api/v1/transactions/{big['id']}"))["transaction"]
    assert detail["delivery"] is not None and "state" in detail["delivery"]

    events = await server.services.sessions.events(session_id)
    signed_events = [
        (e.detail["transaction_id"], e.detail["archive_id"])
        for e in events
        if e.type == "transaction_signed"
    ]
    assert signed_events[:2] == [(big["id"], None), (big["id"], archive_id)]
    async with server.services.sessions._db() as db:
        actions = [
            (e.action, e.target)
            for e in await db.scalars(select(AuditEntry).order_by(AuditEntry.seq))
        ]
    # The teller's approvals that left the word to a supervisor: an override, a second approval.
    assert ("transaction.maker_approved", third["id"]) in actions
    assert ("transaction.maker_approved", big["id"]) in actions
    assert ("transaction.overridden", third["id"]) in actions
    assert ("transaction.created", big["id"]) in actions
    assert [a for a, t in actions if t == big["id"]].count("transaction.signed") == 2
    assert ("transaction.approved", big["id"]) in actions
    assert not any(ACCOUNT in json.dumps(e) for e in actions)


async def _session(
    server: RunningServer, teller: str, business: str
) -> tuple[ApiClient, str, ApiClient]:
    """A teller's new session and its customer (joined by link, not in a call)."""
    await server.user(teller, Role.TELLER)
    staff = server.client()
    await staff.login(teller)
    created = await staff.call(
        "POST", "/api/v1/invitations", {"business": business, "customer_name": "张先生"}, expect=201
    )
    customer = server.client()
    await customer.join_link(created["invitation_url"])
    return staff, created["session"]["id"], customer


async def test_bad_input_is_refused_with_what_to_do(server: RunningServer) -> None:
    teller, session_id, customer = await _session(server, "teller1", "general")
    path = f"/api/v1/sessions/{session_id}/transactions"
    good = purchase(1_000, "deposit")["transaction"]
    bad_amounts: list[Any] = [100.5, "100", -5, 0, True, 2**60, None]
    for minor in bad_amounts:
        body = {"transaction": good | {"amount": {"minor": minor, "currency": "CNY"}}}
        refused = await teller.call("POST", path, body, expect=400)
        assert refused["error"]["code"] == "invalid_request"
        assert "amount.minor" in refused["error"]["message"]
    for amount in (
        {"minor": 100},
        {"minor": 100, "currency": "cny"},
        {"minor": 100, "currency": "XYZ"},
    ):
        refused = await teller.call(
            "POST", path, {"transaction": good | {"amount": amount}}, expect=400
        )
        assert "currency" in refused["error"]["message"]
    # The bank's own limits, checked by the service, name the field as the body's checks do.
    over = {"minor": server.settings.workflow.max_amount_minor + 1, "currency": "CNY"}
    for amount, field, rule in (
        ({"minor": 100, "currency": "XYZ"}, "transaction.amount.currency", "choice"),
        (over, "transaction.amount.minor", "range"),
    ):
        body = {"transaction": good | {"amount": amount}}
        error = (await teller.call("POST", path, body, expect=400))["error"]
        assert (error["code"], error["field"], error["rule"]) == ("invalid_request", field, rule)
    for change in ({"account": "12"}, {"kind": "loan"}, {"product_code": ""}, {"extra": 1}):
        await teller.call("POST", path, {"transaction": good | change}, expect=400)
    async with teller.http.post(
        teller.base + path, data=b"{not json", headers={"X-CSRF-Token": teller.csrf}
    ) as response:
        assert response.status == 400 and (await response.json())["error"]["code"] == "bad_json"

    # A service: only the customer's signature is needed, then the teller's approval is final.
    service = {
        "transaction": {
            "kind": "service",
            "service": "limit_change",
            "account": ACCOUNT,
            "details": {"daily_limit": "20000.00 CNY"},
        }
    }
    created = (await teller.call("POST", path, service, expect=201))["transaction"]
    tid = created["id"]
    refused = await _approve(teller, tid, expect=409)
    assert _failing(refused) == {"not_signed"}

    # The signature: PNG only, capped in bytes and pixels, decodable, not blank.
    cap = server.settings.workflow.signature_max_bytes
    jpeg = io.BytesIO()
    Image.new("RGB", (300, 200), "white").save(jpeg, "JPEG")
    cases = [
        (jpeg.getvalue(), 400, "signature_not_png"),
        (signature_png()[:200], 400, "signature_unreadable"),
        (signature_png(ink=False), 400, "signature_blank"),
        (signature_png(3000, 400), 400, "signature_too_large"),
        (signature_png(40, 40), 400, "signature_too_small"),
        (b"\x89PNG\r\n\x1a\n" + bytes(cap), 413, "signature_too_large"),
    ]
    for data, status, code in cases:
        body = await sign(customer, tid, data, expect=status)
        assert body["error"]["code"] == code, body
    async with customer.http.post(
        f"{customer.base}/api/v1/transactions/{tid}/signature",
        data=signature_png(),
        headers={"Content-Type": "image/jpeg", "X-CSRF-Token": customer.csrf},
    ) as response:
        assert response.status == 415
    async with customer.http.post(
        f"{customer.base}/api/v1/transactions/{tid}/signature",
        data=signature_png(),
        headers={"Content-Type": "image/png"},
    ) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "csrf_failed"
    signed = await sign(customer, tid, signature_png())
    assert signed["transaction"]["signed"] and signed["transaction"]["state"] == "signed"
    done = await _approve(teller, tid)
    assert done["transaction"]["state"] == "approved"
    assert done["approval"]["record"]["recording"] is None  # nothing had to be recorded
    await sign(customer, tid, signature_png(), expect=409)  # approved: no signing again
    await teller.call(
        "POST", f"/api/v1/transactions/{tid}/reject", {"reason": "客户改主意"}, expect=409
    )


async def test_the_customer_cannot_sign_after_the_session_ended(server: RunningServer) -> None:
    teller, session_id, customer = await _session(server, "teller1", "general")
    path = f"/api/v1/sessions/{session_id}/transactions"
    tid = (await teller.call("POST", path, purchase(1_000, "deposit"), expect=201))["transaction"][
        "id"
    ]
    me = await customer.call("GET", "/api/v1/customer/me")
    await teller.call("POST", f"/api/v1/sessions/{session_id}/end")

    # The customer's credential ended with the call...
    refused = await sign(customer, tid, signature_png(), expect=401)
    assert refused["error"]["code"] == "not_authenticated"
    assert "ends with the video session" in refused["error"]["message"]
    await customer.call("GET", "/api/v1/customer/me", expect=401)
    # ...and the service refuses on its own, for a request admitted just before the end.
    admitted = Principal(
        role=Role.CUSTOMER,
        display_name="张先生",
        csrf_token=me["csrf_token"],
        participant_id=me["participant"]["id"],
        session_id=session_id,
    )
    transactions = server.services.transactions
    with pytest.raises(ApiError) as late:
        await transactions.sign(await transactions.get(tid), admitted, signature_png())
    assert (late.value.status, late.value.code) == (409, "session_ended")
    assert _failing(await _approve(teller, tid, expect=409)) == {"not_signed"}


async def test_the_makers_approval_is_logged_before_a_supervisor_decides(
    server: RunningServer,
) -> None:
    teller, session_id, customer = await _session(server, "teller1", "general")
    path = f"/api/v1/sessions/{session_id}/transactions"
    tid = (await teller.call("POST", path, purchase(9_000_000, "deposit"), expect=201))[
        "transaction"
    ]["id"]
    await sign(customer, tid, signature_png())
    first = await _approve(teller, tid)
    assert first["transaction"]["state"] == "awaiting_second_approval"
    logged = [e for e in await server.services.audit.tail(100) if e.target == tid]
    assert [e.action for e in logged] == [
        "transaction.created",
        "transaction.signed",
        "transaction.maker_approved",
    ]
    maker = logged[-1]
    assert (maker.actor, maker.actor_role) == (first["transaction"]["created_by"], "teller")
    assert maker.detail == {
        "session_id": session_id,
        "sha256": first["transaction"]["sha256"],
        "state": "awaiting_second_approval",
        "failing": [],
    }


@pytest.mark.parametrize("step", ["maker", "checker", "override"])
async def test_an_approval_the_log_refuses_leaves_no_decision_behind(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    teller, session_id, customer = await _session(server, "teller1", "general")
    supervisor = await _staff(server, "boss", Role.SUPERVISOR)
    transactions = server.services.transactions
    if step == "override":
        # A purchase without a recording, each of its failing checks overridable: it waits for
        # an override without a whole recording and its analysis.
        every: list[str] = ["identity_passed", "recording_sealed", "compliance_passed"]
        config = transactions.config.model_copy(update={"overridable_checks": every})
        monkeypatch.setattr(transactions, "config", config)
        body, waiting = purchase(1_000, "wealth"), "awaiting_override"
    elif step == "checker":
        body, waiting = purchase(9_000_000, "deposit"), "awaiting_second_approval"
    else:  # within the threshold: the teller's approval is final
        body, waiting = purchase(1_000, "deposit"), "signed"
    path = f"/api/v1/sessions/{session_id}/transactions"
    tid = (await teller.call("POST", path, body, expect=201))["transaction"]["id"]
    await sign(customer, tid, signature_png())
    if step != "maker":
        await _approve(teller, tid, expect=409 if step == "override" else 200)
    assert (await transactions.get(tid)).state == waiting
    before = [d.step for d in await transactions.decisions(tid)]
    steps = ["maker"] if step == "maker" else ["maker", step]

    async def decide(expect: int = 200) -> Any:
        if step != "override":
            return await _approve(teller if step == "maker" else supervisor, tid, expect=expect)
        reason = {"reason": "客户身份已当面核对，录像另行补录"}
        return await supervisor.call(
            "POST", f"/api/v1/transactions/{tid}/override", reason, expect=expect
        )

    # The log refuses just the approval, after whatever the step logs before it.
    audit = server.services.audit
    append = audit.append
    refused: list[str] = []

    async def refuse_the_approval(action: str, **entry: Any) -> Any:
        if action == "transaction.approved" and not refused:
            refused.append(action)
            raise AuditUnavailable()
        return await append(action, **entry)

    monkeypatch.setattr(audit, "append", refuse_the_approval)
    unavailable = await decide(expect=503)
    assert unavailable["error"]["code"] == "audit_unavailable" and refused
    assert (await transactions.get(tid)).state == waiting
    assert [d.step for d in await transactions.decisions(tid)] == before

    # The log is back: four eyes do not refuse the same person's retry, and the signed record
    # lists exactly the decisions the log shows.
    done = await decide()
    assert done["transaction"]["state"] == "approved"
    keys = load_public_keys(server.settings.data_dir / "keys" / "public")
    record = verify_approval(approval_event(await transactions.get(tid)), keys)
    assert [d["step"] for d in record["decisions"]] == steps
    assert done["approval"]["record"]["decisions"] == record["decisions"]
    assert [d.step for d in await transactions.decisions(tid)] == steps
    [approved] = [
        e for e in await audit.tail(100) if e.target == tid and e.action == "transaction.approved"
    ]
    assert approved.detail["steps"] == steps
    assert approved.actor == record["decisions"][-1]["user_id"]


async def test_an_auditor_viewing_a_signature_is_logged(server: RunningServer) -> None:
    teller, session_id, customer = await _session(server, "teller1", "general")
    path = f"/api/v1/sessions/{session_id}/transactions"
    tid = (await teller.call("POST", path, purchase(1_000, "deposit"), expect=201))["transaction"][
        "id"
    ]
    auditor = await _staff(server, "audit", Role.AUDITOR)
    image = f"{server.url}/api/v1/transactions/{tid}/signature.png"
    async with auditor.http.get(image) as response:
        assert response.status == 404  # nothing was shown, so nothing is logged

    await sign(customer, tid, signature_png())
    for client in (teller, auditor):
        async with client.http.get(image) as response:
            assert response.status == 200 and response.content_type == "image/png"
    viewed = [
        e for e in await server.services.audit.tail(100) if e.action == "auditor.signature_viewed"
    ]
    assert len(viewed) == 1
    assert (viewed[0].target, viewed[0].actor_role, viewed[0].detail) == (
        tid,
        "auditor",
        {"session_id": session_id},
    )


async def test_every_forbidden_role_is_refused(server: RunningServer) -> None:
    teller, session_id, customer = await _session(server, "teller1", "wealth")
    other_teller, other_session, other_customer = await _session(server, "teller2", "wealth")
    supervisor = await _staff(server, "boss", Role.SUPERVISOR)
    auditor = await _staff(server, "audit", Role.AUDITOR)
    admin = await _staff(server, "root", Role.ADMIN)
    await server.user("expert1", Role.EXPERT)
    expert = server.client()
    await expert.login("expert1")
    anonymous = server.client()
    path = f"/api/v1/sessions/{session_id}/transactions"
    body = purchase(1_000_000)

    for client in (customer, other_teller, supervisor, auditor, admin, expert):
        await client.call("POST", path, body, expect=403)
    await anonymous.call("POST", path, body, expect=401)
    tid = (await teller.call("POST", path, body, expect=201))["transaction"]["id"]
    await other_customer.call("GET", f"/api/v1/transactions/{tid}", expect=403)
    await other_teller.call("GET", f"/api/v1/transactions/{tid}", expect=403)
    await expert.call("GET", f"/api/v1/transactions/{tid}", expect=403)  # not invited here
    await admin.call("GET", f"/api/v1/transactions/{tid}", expect=403)
    await auditor.call("GET", f"/api/v1/transactions/{tid}")  # auditors read
    mine = await customer.call("GET", f"/api/v1/sessions/{session_id}/transactions")
    assert [t["id"] for t in mine["transactions"]] == [tid]
    assert ACCOUNT not in json.dumps(mine)  # the customer's view masks the account
    await other_customer.call("GET", path, expect=403)

    # Only this session's customer signs; staff never sign for them.
    await sign(other_customer, tid, signature_png(), expect=403)
    for client in (teller, supervisor, auditor, admin):
        await sign(client, tid, signature_png(), expect=403)
    await sign(customer, tid, signature_png())

    approve = f"/api/v1/transactions/{tid}/approve"
    for client in (customer, auditor, admin, expert, other_teller):
        refused = await client.call("POST", approve, {}, expect=403)
        assert refused["error"]["code"] == "forbidden"
    # A supervisor approves second, never first.
    await supervisor.call("POST", approve, {}, expect=409)
    override = f"/api/v1/transactions/{tid}/override"
    reason = {"reason": "这是一段足够长的理由说明"}
    for client in (customer, teller, auditor, admin, expert):
        await client.call("POST", override, reason, expect=403)
    for client in (customer, auditor, admin, expert, other_teller):
        await client.call("POST", f"/api/v1/transactions/{tid}/reject", reason, expect=403)
    for client in (customer, teller, auditor, admin, expert):
        await client.call("GET", "/api/v1/transactions", expect=403)
    image = f"{server.url}/api/v1/transactions/{tid}/signature.png"
    for client in (customer, other_teller, admin, expert):
        async with client.http.get(image) as response:
            assert response.status == 403
    async with auditor.http.get(image) as response:
        assert response.status == 200 and response.content_type == "image/png"

    # Over the WebSocket: another session's customer hears nothing of this one, and cannot
    # connect to it; this session's customer hears only the masked view.
    own = Bot(customer, session_id, publish=False)
    stranger = Bot(other_customer, other_session, publish=False)
    try:
        await own.join()
        await stranger.join()
        intruder = await other_customer.http.ws_connect(other_customer.ws_url(session_id))
        await intruder.send_str(json.dumps({"v": 1, "type": "join"}))
        answer = await intruder.receive_json(timeout=10)
        assert answer["type"] == "error" and answer["code"] in ("forbidden", "not_authenticated")
        await intruder.close()
        await teller.call("POST", f"/api/v1/transactions/{tid}/reject", {"reason": "客户要求取消"})
        pushed = await _transaction_message(own, tid, "rejected")
        assert pushed["transaction"]["account"].startswith("****")
        assert "transaction" not in stranger.history
    finally:
        await own.close()
        await stranger.close()


async def test_staff_get_the_account_masked_and_auditors_whole(server: RunningServer) -> None:
    # Minimum necessary: the teller typed the account in, the supervisor recognises the
    # customer's by its last digits and an expert advises on the product. What their browsers
    # get (answers and pushes alike) stays in the network log, so the server masks it; the
    # auditor and the core bank's signed record keep it whole.
    teller_http, session_id, customer = await _session(server, "teller1", "general")
    supervisor = await _staff(server, "boss", Role.SUPERVISOR)
    auditor = await _staff(server, "audit", Role.AUDITOR)
    teller = Bot(teller_http, session_id, publish=False)
    expert = await _expert_bot(server, teller, session_id)
    masked = "****" + ACCOUNT[-4:]
    seen: list[Any] = []
    try:
        await teller.join()
        await expert.join()
        path = f"/api/v1/sessions/{session_id}/transactions"
        # A deposit in a general session needs no recording; above the threshold, four eyes.
        created = await teller_http.call("POST", path, purchase(6_000_000, "deposit"), expect=201)
        tid = created["transaction"]["id"]
        assert created["transaction"]["transaction"]["account"] == masked
        await sign(customer, tid, signature_png())
        seen += [created, await _approve(teller_http, tid)]
        for bot in (teller, expert):
            pushed = await _transaction_message(bot, tid, "awaiting_second_approval")
            assert pushed["transaction"]["account"] == masked
            seen.append(pushed)
        queue = await supervisor.call("GET", "/api/v1/transactions")
        assert [t["transaction"]["account"] for t in queue["transactions"]] == [masked]
        seen.append(queue)
        second = await _approve(supervisor, tid)
        assert second["approval"]["record"]["transaction"]["account"] == masked
        seen.append(second)
        for client in (teller_http, supervisor, expert.client):
            seen.append(await client.call("GET", path))
            detail = await client.call("GET", f"/api/v1/transactions/{tid}")
            assert detail["transaction"]["approval"]["record"]["transaction"]["account"] == masked
            seen.append(detail)
        for bot in (teller, expert):
            seen.append(await _transaction_message(bot, tid, "approved"))
    finally:
        await expert.close()
        await teller.close()
    assert ACCOUNT not in json.dumps(seen)

    # The auditor reads it whole, with the record that verifies: the one the core bank gets.
    listed = await auditor.call("GET", path)
    assert [t["transaction"]["account"] for t in listed["transactions"]] == [ACCOUNT]
    audited = (await auditor.call("GET", f"/api/v1/transactions/{tid}"))["transaction"]
    assert audited["transaction"]["account"] == ACCOUNT
    keys = load_public_keys(server.settings.data_dir / "keys" / "public")
    record = verify_approval(audited["approval"], keys)
    assert record["transaction"]["account"] == ACCOUNT
    delivered = approval_event(await server.services.transactions.get(tid))
    assert delivered == audited["approval"]
