"""The auditor portal against a real server and a real MinIO: search by every criterion, verify,
play (seekable WebM), export and verify offline, legal hold on every object, and refusals; who may
stream a playback, the sweep of crashed exports, hold changes made at once."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sys
import time
import zipfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import pytest
from minio.error import S3Error
from sqlalchemy import select, update

from recorder.store.s3 import ArchiveBucket
from server.auditor import playback, service
from server.auditor.exporting import GUARD, ExportSpool
from server.auth.principal import Role
from server.db.models import ArchiveIndexEntry, AuditEntry, ComplianceReport, User
from server.identity.idcard import check_digit
from tests.integration.test_identity import SPEC, _consented, _in_call, _step
from tests.integration.test_recording import _recorded, _vteller
from tests.support import server as support
from tests.support.bot import Bot
from tests.support.server import ApiClient, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")

FIRST17 = "11010519491231002"
ID_NUMBER = FIRST17 + check_digit(FIRST17)
CUES_ID = bytes.fromhex("1C53BB6B")


async def _call(
    server: RunningServer, teller: str, customer_name: str, business: str, seconds: float
) -> tuple[str, str]:
    """A recorded call of `teller` with a new customer and one marked moment.

    Returns (archive id, session id) once the sealed archive is in the store.
    """
    http = server.client()
    await http.login(teller)
    created = await http.call(
        "POST",
        "/api/v1/invitations",
        {"business": business, "customer_name": customer_name},
        expect=201,
    )
    session_id = created["session"]["id"]
    customer_http = server.client()
    await customer_http.join_link(created["invitation_url"])
    teller_bot = Bot(http, session_id, colour="blue", tone_hz=880)
    customer_bot = Bot(customer_http, session_id, colour="red", tone_hz=440)

    async def marked_halfway() -> None:
        await asyncio.sleep(seconds / 2)
        await teller_bot.send({"type": "mark", "moment": "risk_disclosure", "phase": "start"})
        await teller_bot.expect("marked")
        await asyncio.sleep(seconds / 2)

    async def joined() -> None:
        await teller_bot.join()
        await customer_bot.join()
        await teller_bot.wait_for_media(customer_bot.participant_id, "camera")

    archive_id = await _recorded(server, teller_bot, customer_bot, marked_halfway, joined)
    return archive_id, session_id


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(120):
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"not within a minute: {what}")


async def _found(client: ApiClient, **criteria: Any) -> list[str]:
    found = await client.call("POST", "/api/v1/auditor/search", criteria)
    return [a["archive_id"] for a in found["archives"]]


async def _staff(server: RunningServer, name: str, role: Role) -> ApiClient:
    await server.user(name, role)
    client = server.client()
    await client.login(name)
    return client


def _decodes_and_seeks(webm: bytes, seek_ms: int) -> int:
    """Frames decoded after seeking to `seek_ms`; the file must carry Cues to seek."""
    assert CUES_ID in webm, "no Cues element: the browser could not seek"
    with av.open(io.BytesIO(webm), mode="r", format="webm") as container:
        video = container.streams.video[0]
        assert container.duration is not None and container.duration > 0
        container.seek(seek_ms * 1000, any_frame=False)  # microseconds (AV_TIME_BASE)
        frames = 0
        for frame in container.decode(video):
            assert frame.width == 320
            frames += 1
            if frames >= 5:
                break
        return frames


async def test_auditor_finds_verifies_plays_exports_and_holds(
    server: RunningServer, tmp_path: Path
) -> None:
    await server.user("wang", Role.TELLER, "王柜员")
    await server.user("zhao", Role.TELLER, "赵柜员")
    first, first_session = await _call(server, "wang", "李女士", "wealth", 4)
    second, _ = await _call(server, "zhao", "张先生", "insurance", 4)
    # The card front of the first customer passed: the same hook identity verification calls.
    await server.services.auditor.index.record_card(
        first_session, {"name": "李秀英", "id_number": ID_NUMBER}
    )
    auditor = await _staff(server, "audit1", Role.AUDITOR)

    # -- search, by every criterion ------------------------------------------------------------
    assert set(await _found(auditor)) == {first, second}
    assert await _found(auditor, teller="wang") == [first]
    assert await _found(auditor, teller="赵柜员") == [second]
    assert await _found(auditor, customer_name="李女士") == [first]
    assert await _found(auditor, customer_name="李秀英") == [first]  # the name on the card
    # Exact names only: a part of one is not searched (the card's is only a keyed hash).
    assert await _found(auditor, customer_name="秀英") == []
    assert await _found(auditor, customer_name="李女") == []
    spaced = f"{ID_NUMBER[:6]} {ID_NUMBER[6:14]} {ID_NUMBER[14:].lower()}"
    assert await _found(auditor, id_number=spaced) == [first]
    other = "11010519800101001"
    assert await _found(auditor, id_number=other + check_digit(other)) == []
    assert await _found(auditor, business="insurance") == [second]

    async def products_indexed() -> bool:
        wealth = await _found(auditor, product="bank_wealth_product")
        insurance = await _found(auditor, product="bank_agent_life_insurance")
        return wealth == [first] and insurance == [second]

    await _eventually(products_indexed, "the archives' products are indexed")
    today = (await auditor.call("POST", "/api/v1/auditor/search", {}))["archives"][0]
    day = today["started_at"][:10]
    assert set(await _found(auditor, date_from=day, date_to=day)) == {first, second}
    assert await _found(auditor, date_to="2020-01-01") == []
    # Compliance results: nothing analysed yet; then the first archive's report says "fail".
    assert set(await _found(auditor, compliance="pending")) == {first, second}
    async with server.services.sessions._db() as db, db.begin():
        db.add(
            ComplianceReport(
                archive_id=first,
                session_id=first_session,
                state="done",
                decision="fail",
            )
        )
    assert await _found(auditor, compliance="fail") == [first]
    assert await _found(auditor, compliance="pass") == []
    assert await _found(auditor, compliance="pending") == [second]
    page = await auditor.call("POST", "/api/v1/auditor/search", {"page": 2})
    assert page["archives"] == [] and page["total"] == 2 and page["page"] == 2
    listed = (await auditor.call("POST", "/api/v1/auditor/search", {"teller": "wang"}))["archives"][
        0
    ]
    assert listed["card_name"] == "李秀英" and listed["id_number_indexed"] is True
    assert ID_NUMBER not in json.dumps(listed)

    # -- open: the stored archive verifies, with its chain link and timeline --------------------
    opened = await auditor.call("GET", f"/api/v1/auditor/archives/{second}")
    verification = opened["verification"]
    assert verification["ok"] and verification["signature"] and verification["decrypted"]
    assert verification["chain"] == "linked" and verification["problems"] == []
    marks = {m["name"]: m["media_ms"] for m in opened["manifest"]["marks"]}
    assert set(marks) == {"consent.start", "risk_disclosure.start"}
    assert {p["role"] for p in opened["manifest"]["participants"]} == {"teller", "customer"}
    assert opened["archive"]["hold"]["held"] is False

    # -- playback: one seekable WebM per person, streamed with byte ranges ----------------------
    started = await auditor.call("POST", f"/api/v1/auditor/archives/{second}/playback")
    views = {v["name"]: v for v in started["views"]}
    assert set(views) == {"customer", "teller"}
    assert views["customer"]["duration_ms"] > 2000
    url = server.url + views["customer"]["url"]
    async with auditor.http.get(url) as response:
        assert response.status == 200 and response.content_type == "video/webm"
        customer_webm = await response.read()
    async with auditor.http.get(url, headers={"Range": "bytes=100-199"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(customer_webm)}"
        assert await response.read() == customer_webm[100:200]
    async with auditor.http.get(url, headers={"Range": "bytes=999999999-"}) as response:
        assert response.status == 416
    # A range no recording can have is ignored, not a crash.
    async with auditor.http.get(url, headers={"Range": "bytes=" + "9" * 5000 + "-"}) as response:
        assert response.status == 200 and await response.read() == customer_webm
    frames = await asyncio.to_thread(
        _decodes_and_seeks, customer_webm, marks["risk_disclosure.start"]
    )
    assert frames == 5
    with av.open(io.BytesIO(customer_webm), mode="r", format="webm") as container:
        kinds = sorted(s.type for s in container.streams)
    assert kinds == ["audio", "video"]  # the customer's camera and microphone, nothing else

    # -- export: a ZIP, downloaded once through its link, that verifies offline -----------------
    exported = await auditor.call("POST", f"/api/v1/auditor/archives/{second}/export")
    download = exported["download"]
    assert download["filename"] == f"vteller-archive-{second}.zip"
    assert download["expires_in"] == 60
    # The link is bound to the login that exported: another auditor's request does not spend it.
    colleague = await _staff(server, "audit2", Role.AUDITOR)
    refused = await colleague.call("GET", download["url"], expect=404)
    assert refused["error"]["code"] == "unknown_download"
    assert "export the package again" in refused["error"]["message"]
    async with auditor.http.get(server.url + download["url"]) as got:
        assert got.status == 200 and got.content_type == "application/zip"
        assert got.headers["Content-Length"] == str(download["bytes"])
        assert f'filename="{download["filename"]}"' in got.headers["Content-Disposition"]
        assert got.headers["X-Content-SHA256"] == download["sha256"]
        # Streamed from its handler, it carries the security headers all the same.
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in got.headers["Content-Security-Policy"]
        package_zip = await got.read()
    assert hashlib.sha256(package_zip).hexdigest() == download["sha256"]
    await auditor.call("GET", download["url"], expect=404)  # once only
    zipfile.ZipFile(io.BytesIO(package_zip)).extractall(tmp_path / "unzipped")
    package = tmp_path / "unzipped" / second
    offline = await _vteller(tmp_path / "elsewhere", "verify", str(package))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    exports = server.settings.data_dir / "exports"
    assert list(exports.iterdir()) == [exports / GUARD], "temporary ZIP left"

    # -- legal hold: on every object in MinIO, recorded with the reason --------------------------
    bucket = ArchiveBucket.from_settings(server.settings.store)
    names = await bucket.list(f"archives/{second}/")
    reason = "诉讼保全：客户投诉 2026-118 号"
    held = await auditor.call(
        "POST", f"/api/v1/auditor/archives/{second}/hold", {"held": True, "reason": reason}
    )
    assert held["hold"]["held"] is True and held["hold"]["objects"] == len(names)
    for name in names:
        state = await bucket.legal_hold(name)
        assert state.on and state.reason == reason, name
    again = {"held": True, "reason": "再次保全"}
    await auditor.call("POST", f"/api/v1/auditor/archives/{second}/hold", again, expect=409)
    # An object added after the hold (as a later signed report is) is held by setting it again.
    late = f"archives/{second}/report-001.json"
    await bucket.put(late, b"{}", datetime.now(UTC) + timedelta(days=1))
    extended = await auditor.call("POST", f"/api/v1/auditor/archives/{second}/hold", again)
    assert extended["hold"]["objects"] == len(names) + 1
    assert (await bucket.legal_hold(late)).on
    names.append(late)
    segment = next(n for n in names if n.endswith(".bin"))
    stat = await asyncio.to_thread(bucket.client.stat_object, bucket.name, segment)
    with pytest.raises(S3Error):
        await asyncio.to_thread(
            bucket.client.remove_object, bucket.name, segment, version_id=stat.version_id
        )
    assert await _found(auditor, hold="held") == [second]
    assert await _found(auditor, hold="not_held") == [first]
    cleared = await auditor.call(
        "POST",
        f"/api/v1/auditor/archives/{second}/hold",
        {"held": False, "reason": "投诉已结案"},
    )
    assert cleared["hold"]["held"] is False
    for name in names:
        assert not (await bucket.legal_hold(name)).on, name
    assert await _found(auditor, hold="held") == []

    # -- every action is in the audit log, without the ID number ---------------------------------
    async with server.services.sessions._db() as db:
        # In the order written (PostgreSQL returns unordered rows in any order): the first
        # hold_set entry is the first hold, asserted below; the second one held the late object.
        entries = list(
            await db.scalars(
                select(AuditEntry)
                .where(AuditEntry.action.like("auditor.%"))
                .order_by(AuditEntry.seq)
            )
        )
    actions = {e.action for e in entries}
    assert actions == {
        "auditor.search",
        "auditor.viewed",
        "auditor.played",
        "auditor.exported",
        "auditor.hold_set",
        "auditor.hold_cleared",
    }
    auditor_id = (await auditor.call("GET", "/api/v1/auth/me"))["user"]["id"]
    assert all(e.actor == auditor_id and e.actor_role == "auditor" for e in entries)
    (exported_entry,) = [e for e in entries if e.action == "auditor.exported"]
    assert exported_entry.detail == {"bytes": len(package_zip), "sha256": download["sha256"]}
    searches = [e for e in entries if e.action == "auditor.search"]
    assert any(e.detail["criteria"] == ["id_number"] for e in searches)
    hasher_hash = server.services.auditor.index._hasher.hash(ID_NUMBER)
    logged = json.dumps([e.detail for e in entries], ensure_ascii=False)
    assert ID_NUMBER not in logged and hasher_hash not in logged
    hold_entry = next(e for e in entries if e.action == "auditor.hold_set")
    assert hold_entry.target == second and hold_entry.detail["reason"] == reason


async def test_a_tampered_archive_shows_failed_and_is_not_played(server: RunningServer) -> None:
    await server.user("wang", Role.TELLER)
    archive_id, _ = await _call(server, "wang", "李女士", "wealth", 2)
    bucket = ArchiveBucket.from_settings(server.settings.store)
    segment = f"archives/{archive_id}/seg-000000.bin"
    original = await bucket.get(segment)
    forged = bytearray(original)
    forged[len(forged) // 2] ^= 0x01
    # Retention keeps the original version; a raw PUT (not vteller's) adds a newer one on top.
    await asyncio.to_thread(
        bucket.client.put_object, bucket.name, segment, io.BytesIO(bytes(forged)), len(forged)
    )
    auditor = await _staff(server, "audit1", Role.AUDITOR)
    opened = await auditor.call("GET", f"/api/v1/auditor/archives/{archive_id}")
    assert opened["verification"]["ok"] is False
    assert any("seg-000000.bin" in p for p in opened["verification"]["problems"])
    refused = await auditor.call(
        "POST", f"/api/v1/auditor/archives/{archive_id}/playback", expect=409
    )
    assert refused["error"]["code"] == "verification_failed"
    async with server.services.sessions._db() as db:
        viewed = await db.scalar(select(AuditEntry).where(AuditEntry.action == "auditor.viewed"))
    assert viewed is not None and viewed.detail["verified"] is False
    assert viewed.detail["problems"] == len(opened["verification"]["problems"])


async def test_roles_other_than_auditor_are_refused(server: RunningServer) -> None:
    await server.user("wang", Role.TELLER)
    archive_id, _ = await _call(server, "wang", "李女士", "wealth", 2)
    base = f"/api/v1/auditor/archives/{archive_id}"
    teller = server.clients[0]  # the call's teller, still logged in
    customer = server.clients[1]
    admin = await _staff(server, "root1", Role.ADMIN)
    expert = await _staff(server, "expert1", Role.EXPERT)
    supervisor = await _staff(server, "boss1", Role.SUPERVISOR)
    auditor = await _staff(server, "audit1", Role.AUDITOR)
    hold = {"held": True, "reason": "调查需要保全"}
    for client in (teller, customer, admin, expert):
        await client.call("POST", "/api/v1/auditor/search", {}, expect=403)
        await client.call("GET", base, expect=403)
        await client.call("POST", f"{base}/playback", expect=403)
        await client.call("GET", f"{base}/media/customer.webm", expect=403)
        await client.call("POST", f"{base}/export", expect=403)
        await client.call("GET", "/api/v1/auditor/downloads/x", expect=403)
        await client.call("POST", f"{base}/hold", hold, expect=403)
    anonymous = server.client()
    await anonymous.call("POST", "/api/v1/auditor/search", {}, expect=401)
    await anonymous.call("GET", base, expect=401)

    # Supervisors review moments, so they may find, open and play; not export or hold.
    assert await _found(supervisor, teller="wang") == [archive_id]
    assert (await supervisor.call("GET", base))["verification"]["ok"]
    await supervisor.call("POST", f"{base}/export", expect=403)
    await supervisor.call("GET", "/api/v1/auditor/downloads/x", expect=403)
    await supervisor.call("POST", f"{base}/hold", hold, expect=403)
    # Media only for someone who started the playback (and so was logged playing it).
    await supervisor.call("GET", f"{base}/media/customer.webm", expect=409)
    await auditor.call("POST", f"{base}/playback")
    await supervisor.call("GET", f"{base}/media/customer.webm", expect=409)
    await auditor.call("GET", f"{base}/media/nobody.webm", expect=404)

    # CSRF on state-changing requests, and clear errors for bad input. An export hands out
    # evidence: a GET (a link or an image on another site) exports nothing.
    by_get = await auditor.call("GET", f"{base}/export", expect=405)
    assert by_get["error"]["code"] == "method_not_allowed"
    assert "POST" in by_get["error"]["message"] and "X-CSRF-Token" in by_get["error"]["message"]
    token, auditor.csrf = auditor.csrf, ""
    await auditor.call("POST", f"{base}/hold", hold, expect=403)
    refused = await auditor.call("POST", f"{base}/export", expect=403)
    assert refused["error"]["code"] == "csrf_failed"
    auditor.csrf = token
    bad = await auditor.call("POST", "/api/v1/auditor/search", {"id_number": "12345"}, expect=400)
    assert "id_number" in bad["error"]["message"]
    bad = await auditor.call(
        "POST", "/api/v1/auditor/search", {"date_from": "tomorrow"}, expect=400
    )
    assert bad["error"]["message"].startswith("date_from")
    backwards = {"date_from": "2026-02-01", "date_to": "2026-01-01"}
    bad = await auditor.call("POST", "/api/v1/auditor/search", backwards, expect=400)
    assert "date_from is after date_to" in bad["error"]["message"]
    await auditor.call("POST", f"{base}/hold", {"held": True, "reason": "x"}, expect=400)
    unknown = await auditor.call("GET", "/api/v1/auditor/archives/nope", expect=404)
    assert unknown["error"]["code"] == "unknown_archive"
    async with server.services.sessions._db() as db:
        refused_entries = list(
            await db.scalars(
                select(AuditEntry).where(
                    AuditEntry.action.in_(("auditor.hold_set", "auditor.exported"))
                )
            )
        )
    assert refused_entries == []


async def test_the_card_read_in_the_call_makes_the_archive_findable(server: RunningServer) -> None:
    teller, customer, _, _ = await _in_call(server)  # the customer holds up the card's front

    async def card_read() -> None:
        await _consented(teller, customer)
        front = await _step(teller, "card_front")
        assert front["steps"]["card_front"]["status"] == "passed", front

    archive_id = await _recorded(server, teller, customer, lambda: asyncio.sleep(2), card_read)
    auditor = await _staff(server, "audit1", Role.AUDITOR)
    assert await _found(auditor, id_number=SPEC.id_number.lower()) == [archive_id]
    assert await _found(auditor, customer_name=SPEC.name) == [archive_id]
    async with server.services.sessions._db() as db:
        rows = list(await db.scalars(select(ArchiveIndexEntry)))
    assert [r.id_hash for r in rows] == [server.services.auditor.index._hasher.hash(SPEC.id_number)]
    assert [r.name_hash for r in rows] == [
        server.services.auditor.index._hasher.hash_name(SPEC.name)
    ]


async def _audited(server: RunningServer, action: str) -> list[AuditEntry]:
    async with server.services.sessions._db() as db:
        query = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        return list(await db.scalars(query))


async def test_media_are_streamed_only_within_the_callers_own_playback_and_login(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.user("wang", Role.TELLER)
    archive_id, _ = await _call(server, "wang", "李女士", "wealth", 2)
    base = f"/api/v1/auditor/archives/{archive_id}"
    media = f"{base}/media/customer.webm"
    first = await _staff(server, "audit1", Role.AUDITOR)
    second = await _staff(server, "audit2", Role.AUDITOR)
    ids = [(await c.call("GET", "/api/v1/auth/me"))["user"]["id"] for c in (first, second)]
    now = time.monotonic()
    monkeypatch.setattr(playback, "time", SimpleNamespace(monotonic=lambda: now))
    ttl = server.settings.auditor.playback_ttl_minutes * 60

    async def streamed(client: ApiClient) -> bool:
        async with client.http.get(server.url + media) as response:
            return response.status == 200 and len(await response.read()) > 0

    await first.call("POST", f"{base}/playback")
    assert await streamed(first)
    # The other auditor keeps the recording in memory by playing it later...
    now += 0.75 * ttl
    await second.call("POST", f"{base}/playback")
    now += 0.5 * ttl
    # ...which does not stretch the first auditor's access: their own playback has ended.
    refused = await first.call("GET", media, expect=409)
    assert refused["error"]["code"] == "playback_not_started"
    assert await streamed(second)
    # Starting again lets them in again, and is logged again.
    await first.call("POST", f"{base}/playback")
    assert await streamed(first)
    # The caller is checked at every request: logged out, or no longer a reader, they get none.
    await first.call("POST", "/api/v1/auth/logout")
    await first.call("GET", media, expect=401)
    async with server.services.sessions._db() as db, db.begin():
        await db.execute(update(User).where(User.username == "audit2").values(role="admin"))
    await second.call("GET", media, expect=403)
    played = [e.actor for e in await _audited(server, "auditor.played")]
    assert played == [ids[0], ids[1], ids[0]]


async def test_viewers_starting_a_recording_at_once_share_one_preparation(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.user("wang", Role.TELLER)
    archive_id, _ = await _call(server, "wang", "李女士", "wealth", 2)
    base = f"/api/v1/auditor/archives/{archive_id}"
    viewers = [await _staff(server, f"audit{n}", Role.AUDITOR) for n in (1, 2)]
    remuxes = 0

    def counted(recording: bytes | bytearray) -> list[playback.View]:
        nonlocal remuxes
        remuxes += 1
        return playback.remux_views(recording)

    monkeypatch.setattr(service, "remux_views", counted)
    await asyncio.gather(*(v.call("POST", f"{base}/playback") for v in viewers))
    # Each one's next request streams: a second preparation replacing the first would have
    # dropped the admission of whichever viewer it was made for.
    for viewer in viewers:
        async with viewer.http.get(f"{server.url}{base}/media/customer.webm") as response:
            assert response.status == 200, await response.text()
    assert remuxes == 1
    assert len(await _audited(server, "auditor.played")) == 2


# A worker that dies while it sends a package: its half-written ZIP stays, its lock goes.
CRASHING_EXPORT = """
import sys, time
from pathlib import Path
from server.auditor.exporting import ExportSpool

claim = ExportSpool(Path(sys.argv[1])).claim()
(claim.path / "package.zip").write_bytes(b"half a package")
print(claim.path, flush=True)
time.sleep(600)
"""


async def test_a_start_sweeps_what_crashed_exports_left_but_no_export_in_progress(
    tmp_path: Path,
) -> None:
    exports = tmp_path / "exports"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_EXPORT, str(exports), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    crashed = Path((await child.stdout.readline()).decode().strip())
    child.kill()  # SIGKILL: no clean-up of its own runs
    await child.wait()
    assert (crashed / "package.zip").exists()
    # What the layout before the spool left: a loose ZIP and a staging directory.
    (exports / "0f1e2d3c.zip").write_bytes(b"PK")
    (exports / "vteller-export-k3j2").mkdir()
    (exports / "vteller-export-k3j2" / "seg-000000.bin").write_bytes(b"sealed")
    # Another worker on the same data directory is sending a package right now.
    sending = await asyncio.to_thread(ExportSpool(exports).claim)
    (sending.path / "package.zip").write_bytes(b"being sent")
    try:
        async with support.running_server(support.test_settings(tmp_path)):
            assert sorted(exports.iterdir()) == sorted([exports / GUARD, sending.path])
            assert (sending.path / "package.zip").read_bytes() == b"being sent"
    finally:
        await asyncio.to_thread(sending.release)
    assert list(exports.iterdir()) == [exports / GUARD]


async def test_hold_changes_made_at_once_are_made_in_turn(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.user("wang", Role.TELLER)
    archive_id, _ = await _call(server, "wang", "李女士", "wealth", 2)
    hold = f"/api/v1/auditor/archives/{archive_id}/hold"
    first = await _staff(server, "audit1", Role.AUDITOR)
    second = await _staff(server, "audit2", Role.AUDITOR)
    bucket = ArchiveBucket.from_settings(server.settings.store)
    # Object Lock calls as slow as a distant store's: changes not made in turn would interleave.
    set_legal_hold = ArchiveBucket.set_legal_hold

    async def slowly(self: ArchiveBucket, name: str, on: bool, reason: str | None = None) -> None:
        await asyncio.sleep(0.2)
        await set_legal_hold(self, name, on, reason)

    monkeypatch.setattr(ArchiveBucket, "set_legal_hold", slowly)

    async def agreed() -> bool:
        """The portal's state, and whether every object in the store is in that state."""
        opened = await first.call("GET", f"/api/v1/auditor/archives/{archive_id}")
        state = opened["archive"]["hold"]
        for name in await bucket.list(f"archives/{archive_id}/"):
            on_object = await bucket.legal_hold(name)
            assert on_object.on == state["held"], (name, on_object, state)
            if state["held"]:
                assert on_object.reason == state["reason"], (name, on_object, state)
        return bool(state["held"])

    async def change(client: ApiClient, held: bool, reason: str) -> int:
        async with client.http.post(
            server.url + hold,
            json={"held": held, "reason": reason},
            headers={"X-CSRF-Token": client.csrf},
        ) as response:
            return response.status

    # The same change twice at once: one makes it, the other finds it made.
    statuses = await asyncio.gather(
        change(first, True, "监管调查甲"), change(second, True, "诉讼保全乙")
    )
    assert sorted(statuses) == [200, 409]
    assert await agreed()
    # Clearing while another auditor holds an object added since: in either order, the database
    # and every object end up agreeing.
    late = f"archives/{archive_id}/report-001.json"
    await bucket.put(late, b"{}", datetime.now(UTC) + timedelta(days=1))
    statuses = await asyncio.gather(
        change(first, False, "误操作解除"), change(second, True, "补充保全")
    )
    assert list(statuses) == [200, 200]
    await agreed()
    changes = await _audited(server, "auditor.hold_set") + await _audited(
        server, "auditor.hold_cleared"
    )
    assert len(changes) == 3
