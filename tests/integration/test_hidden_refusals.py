"""A refusal answered 404 on purpose (something that exists, but is not the asker's) is audited as
`access.denied`, like a 403, while the answer stays the one a missing object gets; an object that
really is missing is not audited."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from server.auditor.exporting import PackageDownload, PackageZip, SpoolClaim
from server.auth.principal import Role
from server.auth.tokens import new_token
from server.db.models import AuditEntry
from tests.integration.test_access_matrix import denied_entries
from tests.support.server import ApiClient, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")

DOWNLOADS = "/api/v1/auditor/downloads"


async def _login(server: RunningServer, username: str) -> ApiClient:
    client = server.client()
    await client.login(username)
    return client


async def _denials(server: RunningServer) -> list[AuditEntry]:
    # The entry of a hidden refusal is written after the answer: wait for those still running.
    await server.services.denials.close()
    return await denied_entries(server)


def _offer(server: RunningServer, tmp_path: Path, user_id: str, login_csrf: str) -> str:
    """A package `user_id` exported in the login with `login_csrf`, waiting for its download."""
    directory = tmp_path / "export"
    directory.mkdir()
    data = b"PK\x05\x06" + bytes(18)  # an empty ZIP
    (directory / "package.zip").write_bytes(data)
    claim = SpoolClaim(directory, os.open(directory, os.O_RDONLY))
    package = PackageZip(directory / "package.zip", len(data), hashlib.sha256(data).hexdigest())
    download = PackageDownload("a_hidden", user_id, login_csrf, claim, package)
    return server.services.auditor._downloads.offer(download)


async def test_another_logins_download_link_is_answered_as_missing_and_audited(
    server: RunningServer, tmp_path: Path
) -> None:
    owner_id = await server.user("audit1", Role.AUDITOR)
    colleague_id = await server.user("audit2", Role.AUDITOR)
    owner = await _login(server, "audit1")
    colleague = await _login(server, "audit2")
    token = _offer(server, tmp_path, owner_id, owner.csrf or "")

    # A link that does not exist: 404, and nothing to audit.
    missing = await colleague.call("GET", f"{DOWNLOADS}/{new_token()}", expect=404)
    assert missing["error"]["code"] == "unknown_download"
    assert await _denials(server) == []

    # The owner's link followed by a colleague: the same answer, word for word, but audited.
    hidden = await colleague.call("GET", f"{DOWNLOADS}/{token}", expect=404)
    assert hidden == missing
    [entry] = await _denials(server)
    assert (entry.actor, entry.actor_role) == (colleague_id, "auditor")
    assert entry.target == "/api/v1/auditor/downloads/{token}"
    assert entry.detail["method"] == "GET" and entry.detail["ids"] == {}
    reason = entry.detail["reason"]
    assert reason.startswith("answered 404 unknown_download: ")
    assert "archive a_hidden" in reason and f"another auditor ({owner_id})" in reason
    assert token not in json.dumps(entry.detail)  # the link is a credential: never logged

    # Probing again within the minute is counted, not written: the log does not grow at will.
    await colleague.call("GET", f"{DOWNLOADS}/{token}", expect=404)
    assert len(await _denials(server)) == 1

    # The same auditor in another browser (another login) is refused the link too.
    elsewhere = await _login(server, "audit1")
    await elsewhere.call("GET", f"{DOWNLOADS}/{token}", expect=404)
    entries = await _denials(server)
    assert len(entries) == 2 and entries[1].actor == owner_id
    assert "another login of the same auditor" in entries[1].detail["reason"]

    # None of it spent the link: the login that exported still downloads it.
    async with owner.http.get(f"{server.url}{DOWNLOADS}/{token}") as got:
        assert got.status == 200 and await got.read() == b"PK\x05\x06" + bytes(18)

    [family] = list(server.services.denials.collect())
    counted = {
        (s.labels["status"], s.labels["code"], s.labels["audited"]): s.value for s in family.samples
    }
    assert counted[("404", "unknown_download", "true")] == 2
    assert counted[("404", "unknown_download", "false")] == 1
