"""The audit log's vocabulary: every action an entry may name, and who may be its actor.

docs/audit-log.md lists the same table for readers; a new action is added in both places. An
unknown action is a programming error, refused at append time, so the log never holds names that
nobody documented.
"""

from __future__ import annotations

# Actors that are not a user or participant id.
SYSTEM = "system"  # the service itself, or an operator at the command line
ANONYMOUS = "anonymous"  # an unauthenticated request (a failed login)

ACTIONS: dict[str, str] = {
    "auth.login": "a staff member logged in (actor: user id; target: username)",
    "auth.login_failed": "a login was refused: wrong credentials or throttled (target: username "
    "as typed; detail.reason)",
    "auth.logout": "a staff member logged out (actor: user id)",
    "access.denied": "a logged-in staff member or customer was refused a route, or a message in "
    "a call, by their role or by the object it names (answered 403, or 404 as if missing for "
    "an object that exists but is not theirs: reason 'answered 404 CODE: ...'; target: the "
    "route's pattern; "
    "detail.method (or the message's type), ids, reason, suppressed); at most one a minute per "
    "principal, method and route on each worker",
    "admin.user_created": "a staff account was created (target: username; detail.user_id, "
    "detail.role, detail.via = api | cli)",
    "admin.user_disabled": "an operator, or a supervisor on the staff page, disabled a staff "
    "account and ended its logins (actor: os:USER@HOST, or the supervisor's user id; target: "
    "username; detail.user_id, reason, logins_ended)",
    "admin.user_enabled": "an operator, or a supervisor on the staff page, let a disabled staff "
    "account log in again (target: username; detail.user_id, disabled_reason)",
    "admin.user_unlocked": "an operator, or a supervisor on the staff page, cleared a staff "
    "account's login lock-out (target: username; detail.user_id)",
    "admin.password_reset": "an operator set a new password for a staff account, ending its "
    "logins (target: username; detail.user_id)",
    "invitation.created": "a teller created a session and its customer link (target: session id)",
    "invitation.redeemed": "a customer opened the link and got their credential (actor: "
    "participant id; target: session id)",
    "expert.invited": "a teller invited an expert into a session (target: session id; "
    "detail.expert_user_id, detail.participant_id)",
    "session.joined": "a participant joined the call, or rejoined it (detail.rejoined)",
    "session.join_failed": "the join in the participant's previous session.joined failed part-way "
    "and was undone (detail.rejoined, detail.error)",
    "session.left": "a participant left the call (detail.reason: left | timeout)",
    "session.ended": "a participant ended the session, or an operator's or supervisor's disable "
    "of its teller cancelled it before it started (target: session id; detail.reason = "
    "teller_disabled then)",
    "recording.requested": "the teller asked the customer for consent to record",
    "recording.consent": "the customer answered the consent request (detail.granted)",
    "recording.started": "the dual recording started (detail.archive_id)",
    "recording.marked": "the teller marked a key moment (detail.moment, phase, media_ms)",
    "recording.stopped": "the teller stopped the recording",
    "recording.sealed": "a recording was sealed and chained (target: archive id; "
    "detail.status, detail.manifest_sha256)",
    "compliance.reported": "the after-call analysis added its signed report to an archive "
    "(target: archive id; detail.session_id, decision, report, report_sha256, reviews)",
    "compliance.reviewed": "a supervisor decided a moment the analysis left for review "
    "(target: archive id; detail.review_id, moment, decision = approved | rejected, note)",
    "identity.requested": "the teller started identity verification (target: session id)",
    "identity.consent": "the customer answered the face recognition consent request "
    "(detail.granted)",
    "identity.step_started": "the teller started an automatic identity step (detail.step: "
    "card_front | card_back | face | liveness)",
    "identity.checked": "an identity step ended (detail.step, outcome = pass | fail, reason, "
    "record = the encrypted identity record's id)",
    "identity.manual": "the teller verified identity manually (detail.decision = pass | fail, "
    "detail.reason, detail.previous_state)",
    "identity.result": "the session's identity verification concluded (detail.decision, "
    "detail.method = automatic | manual)",
    "webhook.delivered": "the core bank's webhook accepted an approved transaction (target: "
    "transaction id; detail.delivery_id, attempts, status)",
    "webhook.failed": "delivery of an approved transaction gave up: refused by the webhook or out "
    "of attempts (target: transaction id; detail.delivery_id, attempts, status, reason)",
    "webhook.retried": "an operator sent a failed delivery again (target: transaction id; "
    "detail.delivery_id, attempts, via = api | cli)",
    "auditor.search": "an auditor or supervisor searched the archives (detail.criteria = names "
    "of the criteria used, never their values; page, results)",
    "auditor.viewed": "an archive was opened in the portal and verified (target: archive id; "
    "detail.verified, problems)",
    "auditor.played": "a recording was decrypted for playback in the portal (target: archive id; "
    "detail.views)",
    "auditor.signature_viewed": "an auditor was shown a customer's decrypted signature image "
    "(target: transaction id; detail.session_id), or an auditor or supervisor was shown it from "
    "the sealed archive in the portal (detail.archive_id, source = archive)",
    "auditor.exported": "an archive's verifiable package was downloaded (target: archive id; "
    "detail.bytes, sha256 of the ZIP)",
    "auditor.hold_set": "a legal hold was set on every object of an archive (target: archive "
    "id; detail.reason, objects)",
    "auditor.hold_cleared": "a legal hold was cleared (target: archive id; detail.reason, objects)",
    "auditor.sessions_listed": "an auditor listed the sessions never recorded whose evidence "
    "is not erased yet (detail.date_from, date_to, identity, limit, results, more)",
    "auditor.session_viewed": "an auditor looked up a session to hold its evidence (target: "
    "session id; detail.identity_records, held)",
    "auditor.session_hold_set": "a legal hold was set on a session never recorded: `vteller "
    "archive purge` keeps its identity records and customer data (target: session id; "
    "detail.reason, identity_records)",
    "auditor.session_hold_cleared": "a session's legal hold was cleared; the purge erases it at "
    "its next run if its retention has ended (target: session id; detail.reason, "
    "identity_records)",
    "archive.purged": "an archive was deleted at the end of its retention by `vteller archive "
    "purge` (actor: the operator's OS account; target: archive id; detail.session_id, "
    "manifest_sha256, retain_until, deleted_at, objects, bytes, identity_records)",
    "archive.retention_unverified": "an object of an archive reached the store, but its "
    "retention read back was not the COMPLIANCE retention asked for; it stays in the spool and "
    "is tried again (target: archive id; detail.object, error); once per archive per worker "
    "until archive.recovered",
    "archive.legal_hold_unverified": "a legal hold set on an archive's object read back as off "
    "(target: archive id; detail.error naming the object, by = the auditor's user id); once "
    "per archive per worker until archive.recovered",
    "archive.upload_failed": "the archive store refused an object for good (different bytes "
    "under its name) or its spool file was corrupt: set aside in the spool's rejected/ "
    "directory for an operator (target: archive id, or empty; detail.object, reason = conflict "
    "| corrupt, error, spool_file); once per archive per worker",
    "archive.seal_failed": "a recording could not be sealed (its seal, or the worker's later "
    "attempt, failed); its journal is tried again every minute (target: archive id; "
    "detail.session_id, error, stage = stop | retry); once per archive per worker until "
    "archive.recovered",
    "archive.recovered": "a failure logged by archive.retention_unverified, "
    "archive.legal_hold_unverified or archive.seal_failed cleared (target: archive id; "
    "detail.failure = that action, suppressed = failures since it not logged, object or status)",
    "identity.purged": "the identity records of a session never recorded were deleted "
    "identity.unrecorded_retention_days after it ended (target: session id; detail.records, "
    "ended_at, retention_days)",
    "queue.joined": "a customer joined the public queue (actor and target: ticket id; "
    "detail.topic, business, elderly)",
    "queue.left": "a ticket left the queue (target: ticket id; detail.reason = cancelled | "
    "abandoned | expired; actor: the ticket, or system when swept)",
    "queue.callback_requested": "a waiting customer asked to be called back instead (actor: "
    "ticket id; target: callback id; detail.business; never the number)",
    "queue.taken": "a teller took a customer from the queue (target: ticket id; "
    "detail.session_id, business, elderly, assigned, waited_seconds)",
    "queue.take_lost": "a take logged in queue.taken lost its ticket before the customer got "
    "the call, and its session was ended (target: ticket id; detail.session_id, undone)",
    "queue.reassigned": "a supervisor routed a waiting ticket to a teller, or an operator's or "
    "supervisor's disable of the teller gave their tickets back to the general queue (target: "
    "ticket id; detail.teller_id, previous; reason = teller_disabled and session_id then)",
    "queue.callback_claimed": "a teller claimed a callback and was shown its number (target: "
    "callback id)",
    "queue.callback_done": "a teller completed a callback; its number is erased (target: "
    "callback id)",
    "teller.status_changed": "a teller set their queue status (target: user id; detail.status, "
    "previous)",
    "teller.skills_changed": "a supervisor or admin changed a teller's skills (target: user id; "
    "detail.skills, previous)",
    "transaction.created": "a teller created a transaction in a session (target: transaction id; "
    "detail.session_id, kind, product_type, amount_minor, currency, sha256)",
    "transaction.signed": "the customer signed a transaction (target: transaction id; "
    "detail.session_id, sha256, signature_sha256)",
    "transaction.maker_approved": "the teller who created a transaction approved it, leaving "
    "the final word to a supervisor (target: transaction id; detail.session_id, sha256, state = "
    "awaiting_second_approval | awaiting_override, failing)",
    "transaction.approved": "a transaction was finally approved and its record signed (target: "
    "transaction id; detail.session_id, sha256, manifest_sha256, record_sha256, steps)",
    "transaction.rejected": "a teller or supervisor rejected a transaction (target: transaction "
    "id; detail.session_id, reason)",
    "transaction.overridden": "a supervisor overrode failed approval checks with a reason "
    "(target: transaction id; detail.session_id, checks, reason)",
    "audit.checkpoint_forced": "an operator had the writer sign although checkpoints were "
    "missing (`vteller audit checkpoint --accept-unsigned`; detail.reason, detail.refused)",
}

# Detail members that must never be written: credentials and identity document numbers. This is a
# guard against mistakes, not a filter: the caller chooses what goes into `detail`.
FORBIDDEN_DETAIL_KEYS = frozenset(
    {"password", "token", "credential", "csrf_token", "secret", "id_number", "document_number"}
)
