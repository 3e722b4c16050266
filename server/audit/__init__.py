"""The tamper-evident audit log: hash-chained entries in the shared database, signed checkpoints.

See docs/audit-log.md for the format and the vocabulary, and `vteller audit verify` to check it.
"""

from server.audit.actions import ACTIONS, ANONYMOUS, SYSTEM
from server.audit.log import AuditLog, AuditUnavailable

__all__ = ["ACTIONS", "ANONYMOUS", "SYSTEM", "AuditLog", "AuditUnavailable"]
