"""Who is making a request, and which roles exist."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    CUSTOMER = "customer"
    TELLER = "teller"
    EXPERT = "expert"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"
    ADMIN = "admin"


STAFF_ROLES = frozenset(Role) - {Role.CUSTOMER}
# Roles that may take part in a call; auditors and admins never do.
CALL_ROLES = frozenset({Role.CUSTOMER, Role.TELLER, Role.EXPERT, Role.SUPERVISOR})


@dataclass(frozen=True)
class Principal:
    role: Role
    display_name: str
    csrf_token: str
    user_id: str | None = None  # staff
    username: str | None = None  # staff
    participant_id: str | None = None  # customer: bound to one participant row...
    session_id: str | None = None  # ...of exactly one session

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES
