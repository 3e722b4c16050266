"""An authorization refusal stands when its audit entry cannot be written."""

from __future__ import annotations

from typing import Any, cast

from server.audit.denials import Denials
from server.audit.log import AuditLog
from server.auth.principal import Principal, Role


class DownAudit:
    def __init__(self) -> None:
        self.tries = 0

    async def append_fact(self, action: str, **kwargs: Any) -> None:
        self.tries += 1
        raise ConnectionError("database unavailable")


async def test_a_refusal_whose_audit_entry_fails_is_still_refused_and_counted() -> None:
    audit = DownAudit()
    denials = Denials(cast(AuditLog, audit))
    teller = Principal(Role.TELLER, "Teller", "csrf", user_id="u_1", username="teller")
    await denials.refused(
        teller,
        method="GET",
        route="/api/v1/audit",
        path_ids={},
        reason="Your role may not read the audit log.",
        address="192.0.2.7",
    )
    assert audit.tries == 1
    [family] = list(denials.collect())
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"status": "403", "code": "forbidden", "audited": "false"}, 1.0)
    ]
