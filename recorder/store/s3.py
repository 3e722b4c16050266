"""The archive bucket: S3 objects under COMPLIANCE Object Lock retention, through the `minio` SDK.

Only the plain S3 API is used (bucket with Object Lock, PutObject with retention headers, object
retention, legal hold, tagging, versions): MinIO is in maintenance mode upstream, and the same code
must work against Ceph RGW or any other S3 store with Object Lock.

The SDK is blocking (urllib3). Every call runs in a worker thread through `asyncio.to_thread`, so
the event loop that carries the calls' media never waits for the network. The `Minio` client is
thread-safe (one urllib3 pool), so concurrent calls share it.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE, Tags
from minio.datatypes import Object
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.retention import Retention

from recorder.store.config import StoreSettings

#: User metadata holding the SHA-256 of the object's bytes (x-amz-meta-sha256). It makes re-uploads
#: idempotent across crashes and lets `get` check what it read; ETags cannot, since a multipart
#: upload's ETag is not a digest of the content.
SHA256_METADATA = "sha256"
#: Object tags that record why a legal hold was set (S3's legal hold itself is only ON/OFF).
LEGAL_HOLD_REASON_TAG = "vteller-legal-hold-reason"
LEGAL_HOLD_AT_TAG = "vteller-legal-hold-at"

# Tag values that every store accepts: AWS documents Unicode letters, but MinIO refuses anything
# beyond ASCII letters, digits, space and + - = . _ : / @ (measured). A reason made only of those
# is stored as is (readable in any console); any other reason (Chinese text, '#', '&') is stored
# as "b64:" + base64url of its UTF-8, which uses only safe characters, at most 256 of them.
_TAG_VALUE_SAFE = re.compile(r"^[A-Za-z0-9 +\-=._:/@]*$")
_TAG_VALUE_MAX = 256
_TAG_B64 = "b64:"
_TAG_TIME = "%Y-%m-%dT%H:%M:%SZ"
# Retention dates are compared with this slack: stores keep them with second or millisecond
# precision, and a date that is a fraction of a second shorter is not worth a failed upload.
_RETENTION_SLACK = timedelta(seconds=1)
# How a store refuses retention on a bucket without Object Lock: MinIO says "Bucket is missing
# ObjectLockConfiguration", AWS "Bucket is missing Object Lock Configuration".
_LOCK_MISSING = re.compile(r"object\s*lock", re.IGNORECASE)

_T = TypeVar("_T")


class ArchiveStoreError(Exception):
    """Something the archive store refused or could not do."""


class StoreConfigError(ArchiveStoreError):
    """The store is not configured well enough to be used (credentials, bucket)."""


class ObjectLockMissingError(StoreConfigError):
    """The bucket exists but was created without Object Lock, so nothing in it can be retained."""


class RetentionNotVerifiedError(StoreConfigError):
    """An object was stored, but its retention read back is not the COMPLIANCE retention asked
    for (a store that ignores the header, a proxy that strips it, an object already there under
    GOVERNANCE): it could be deleted, so it does not count as archived."""


class ArchiveUnavailableError(ArchiveStoreError):
    """The store could not be reached or answered with a server error: worth retrying later."""


class ArchiveConflictError(ArchiveStoreError):
    """Different bytes are already archived under this name; nothing was overwritten."""


class ArchiveNotFoundError(ArchiveStoreError):
    """No such object in the archive."""


class ArchiveIntegrityError(ArchiveStoreError):
    """The bytes read back do not match the SHA-256 recorded when they were archived."""


class DeleteRefusedError(ArchiveStoreError):
    """The store refused to delete an object version: by its own clock the version is still
    under retention, or under legal hold. The final guard against deleting early."""


@dataclass(frozen=True)
class PutResult:
    """An object that is in the archive, under retention until `retain_until`."""

    name: str
    version_id: str | None
    sha256: str
    size: int
    retain_until: datetime
    """The retain-until date read back from the store after the upload (not just the one asked
    for): at least that date, in `retention_mode`."""
    created: bool
    """False when identical bytes were already there (a re-upload after a crash)."""
    retention_mode: str = COMPLIANCE


@dataclass(frozen=True)
class StoredVersion:
    """One version of an object, or a delete marker (which has no content, retention or hold)."""

    name: str
    version_id: str | None
    size: int
    delete_marker: bool


@dataclass(frozen=True)
class VersionLock:
    """What keeps one object version from being deleted: its retention and its legal hold."""

    mode: str | None
    retain_until: datetime | None
    held: bool


@dataclass(frozen=True)
class LegalHold:
    """Legal hold of one object version. `reason` is what `set_legal_hold` recorded, if anything."""

    on: bool
    reason: str | None = None
    since: datetime | None = None


def check_object_name(name: str) -> str:
    """Reject names that S3 stores would refuse or that could not round-trip through listings."""
    if not name or name.startswith("/") or "//" in name:
        raise ValueError(f"invalid archive object name {name!r}: empty, or leading or double '/'")
    if len(name.encode()) > 1024:
        raise ValueError(f"archive object name longer than 1024 bytes: {name[:60]!r}...")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise ValueError(f"archive object name contains control characters: {name!r}")
    if any(part in (".", "..") for part in name.split("/")):
        raise ValueError(f"archive object name contains '.' or '..' segments: {name!r}")
    return name


def describe_error(exc: BaseException) -> str:
    """A short, human reason for a failure: 'connection refused', 'AccessDenied: ...'.

    urllib3 wraps the socket error several levels deep (MaxRetryError → NewConnectionError →
    ConnectionRefusedError); the innermost OS error says what an operator needs to know.
    """
    if isinstance(exc, StoreConfigError):
        return str(exc)  # written for the operator: it names the fix, where the S3 code does not
    chain: builtins.list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else current.__cause__
        current = current or chain[-1].__context__
    for link in chain:
        if isinstance(link, S3Error):
            return f"{link.code}: {link.message}"
    for link in reversed(chain):  # innermost first
        if isinstance(link, OSError) and link.strerror:
            return link.strerror.lower()
        if isinstance(link, TimeoutError | urllib3.exceptions.TimeoutError):
            return "timed out"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _is_unavailable(exc: BaseException) -> bool:
    # Network-level failures, and 5xx answers that are not S3 errors with a code (a proxy in front
    # of the store, a store restarting), mean "try again later"; an S3 error code means the store
    # answered and refused.
    return isinstance(
        exc, urllib3.exceptions.HTTPError | OSError | ServerError | InvalidResponseError
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_tag_value(text: str) -> str:
    """`text` as an object tag value every S3 store accepts (see _TAG_VALUE_SAFE); lossless
    unless longer than a tag can hold, when it is cut (on a character boundary)."""
    if _TAG_VALUE_SAFE.match(text) and not text.startswith(_TAG_B64):
        return text[:_TAG_VALUE_MAX]
    raw = text.encode()
    # 4 base64 characters per 3 bytes, after the prefix.
    raw = raw[: (_TAG_VALUE_MAX - len(_TAG_B64)) // 4 * 3].decode(errors="ignore").encode()
    return _TAG_B64 + base64.urlsafe_b64encode(raw).decode()


def decode_tag_value(value: str) -> str:
    if value.startswith(_TAG_B64):
        try:
            return base64.urlsafe_b64decode(value[len(_TAG_B64) :]).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError: a tag edited by hand
            return value
    return value


def make_client(settings: StoreSettings) -> Minio:
    """A `Minio` client for `settings`, with bounded timeouts and retries.

    The SDK's default pool waits up to 5 minutes to connect and retries 5 times; behind a spool
    that retries on its own schedule, a short connect timeout and few retries let the status
    say "connection refused" within seconds instead of hanging an upload slot.
    """
    if not settings.access_key or not settings.secret_key.get_secret_value():
        raise StoreConfigError(
            "no S3 credentials: set VTELLER_S3_ACCESS_KEY and VTELLER_S3_SECRET_KEY, or "
            "store.access_key/secret_key (for the local MinIO that infra/run.sh starts, run "
            '`eval "$(bash infra/minio.sh env)"` in the checkout first)'
        )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(
            connect=settings.connect_timeout_seconds, read=settings.read_timeout_seconds
        ),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        # None: urllib3 loads the system's CAs (where a bank installs its private CA).
        ca_certs=str(settings.ca_file) if settings.ca_file else None,
        retries=urllib3.Retry(
            total=2, connect=2, read=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )
    return Minio(
        settings.host_port,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        region=settings.region,
        http_client=http,
    )


class ArchiveBucket:
    """One S3 bucket with Object Lock, where archived objects can be added but never replaced.

    The async methods are the API; each runs its blocking SDK calls in a thread. `client` is the
    underlying `Minio` client, for administration and tests that need raw S3 calls.
    """

    def __init__(self, client: Minio, bucket: str, *, region: str | None = None) -> None:
        self._client = client
        self._bucket = bucket
        self._region = region

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> ArchiveBucket:
        return cls(make_client(settings), settings.bucket, region=settings.region)

    @property
    def name(self) -> str:
        return self._bucket

    @property
    def client(self) -> Minio:
        return self._client

    # --- async API ------------------------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Create the bucket with Object Lock if missing; fail if it exists without Object Lock."""
        await self._run(self._ensure_bucket_sync)

    async def put(self, name: str, data: bytes, retain_until: datetime) -> PutResult:
        """Archive `data` under `name`, in COMPLIANCE retention until `retain_until`.

        Idempotent: if the same bytes are already there (a re-upload after a crash), nothing is
        written, and the existing retention is extended if it was shorter. Different bytes under
        the same name raise `ArchiveConflictError`. Either way the retention is read back, and
        anything but COMPLIANCE until at least `retain_until` raises `RetentionNotVerifiedError`.
        """
        return await self._run(lambda: self.put_sync(name, data, retain_until))

    async def get(self, name: str, version_id: str | None = None) -> bytes:
        """The bytes of `name` (the latest version, or `version_id`), checked against SHA-256."""
        return await self._run(lambda: self.get_sync(name, version_id))

    async def list(self, prefix: str = "") -> builtins.list[str]:
        """Names of current objects under `prefix`, in lexicographic order (recursive)."""
        return await self._run(lambda: self.list_sync(prefix))

    async def retention(self, name: str, version_id: str | None = None) -> datetime | None:
        """The COMPLIANCE/GOVERNANCE retain-until date of an object, or None if it has none."""
        return await self._run(lambda: self._retention_sync(name, version_id))

    async def set_legal_hold(
        self, name: str, on: bool, reason: str | None = None, version_id: str | None = None
    ) -> None:
        """Set or clear the legal hold of `name` (latest version unless `version_id`).

        A legal hold keeps the object even after its retention ends, until it is cleared. S3
        records only ON/OFF, so `reason` (and the time) go into object tags, which can be
        changed on a locked object without creating a version (a reason with other characters than
        ASCII letters, digits, space and + - = . _ : / @ is stored base64url-encoded, and cut to
        fit a tag's 256 characters). The authoritative record of who did it and why belongs in
        the audit log.
        """
        await self._run(lambda: self._set_legal_hold_sync(name, on, reason, version_id))

    async def legal_hold(self, name: str, version_id: str | None = None) -> LegalHold:
        """Whether `name` (latest version unless `version_id`) is under legal hold, and why."""
        return await self._run(lambda: self._legal_hold_sync(name, version_id))

    async def versions(self, prefix: str) -> builtins.list[StoredVersion]:
        """Every version and delete marker of every object under `prefix`, as stored."""
        return await self._run(lambda: self._versions_sync(prefix))

    async def version_lock(self, name: str, version_id: str | None) -> VersionLock:
        """The retention and legal hold of one object version, as the store holds them."""
        return await self._run(lambda: self._version_lock_sync(name, version_id))

    async def delete_version(self, name: str, version_id: str | None) -> None:
        """Delete one version (or delete marker) for good, not hide it behind a delete marker.

        Raises DeleteRefusedError when the store refuses (retention not ended by its clock, or a
        legal hold); deleting a version already gone succeeds, so a purge can be run again.
        """
        await self._run(lambda: self._delete_version_sync(name, version_id))

    # --- blocking implementation (run in threads; also used by S3Archive) -------------------------

    async def _run(self, call: Callable[[], _T]) -> _T:
        return await asyncio.to_thread(self._translate, call)

    def _translate(self, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except ArchiveStoreError:
            raise
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchVersion", "ResourceNotFound"):
                raise ArchiveNotFoundError(
                    f"{exc.object_name or '?'} is not in bucket {self._bucket}"
                ) from exc
            if exc.code == "NoSuchBucket":
                raise StoreConfigError(
                    f"bucket {self._bucket} does not exist (ensure_bucket() creates it)"
                ) from exc
            if exc.code == "InvalidRequest" and _LOCK_MISSING.search(exc.message or ""):
                # The bucket was made again without Object Lock since it was checked: the store
                # refused the retention, and saying so names the fix.
                raise self._object_lock_missing() from exc
            raise ArchiveStoreError(describe_error(exc)) from exc
        except Exception as exc:
            if _is_unavailable(exc):
                raise ArchiveUnavailableError(
                    f"archive store unreachable: {describe_error(exc)}"
                ) from exc
            raise

    def _object_lock_missing(self) -> ObjectLockMissingError:
        return ObjectLockMissingError(
            f"bucket {self._bucket} exists but has no Object Lock, so recordings in it "
            "could be deleted. Object Lock can only be enabled when a bucket is created: "
            "configure another bucket name (VTELLER_STORE__BUCKET) and let vteller "
            "create it, or create it yourself with Object Lock enabled."
        )

    def _ensure_bucket_sync(self) -> None:
        if not self._client.bucket_exists(self._bucket):
            try:
                self._client.make_bucket(self._bucket, location=self._region, object_lock=True)
            except S3Error as exc:
                # Another process created it between our check and our call: fine if it is ours.
                if exc.code != "BucketAlreadyOwnedByYou":
                    raise
        try:
            config = self._client.get_object_lock_config(self._bucket)
        except S3Error as exc:
            if exc.code in ("ObjectLockConfigurationNotFoundError", "InvalidRequest"):
                raise self._object_lock_missing() from exc
            raise
        del config  # Its presence is the check; vteller sets retention per object, not by default.

    def _stat_or_none(self, name: str) -> Object | None:
        try:
            return self._client.stat_object(self._bucket, name)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise

    def _hidden_versions(self, name: str) -> builtins.list[str]:
        # ListObjectVersions by prefix returns longer names too ("seg-1" finds "seg-10"): keep
        # exact matches that are real versions, not delete markers.
        return [
            str(item.version_id)
            for item in self._client.list_objects(self._bucket, prefix=name, include_version=True)
            if item.object_name == name and not item.is_delete_marker
        ]

    def put_sync(self, name: str, data: bytes, retain_until: datetime) -> PutResult:
        """Blocking `put`; call it from a thread."""
        return self._translate(lambda: self._put_sync(name, data, retain_until))

    def _put_sync(self, name: str, data: bytes, retain_until: datetime) -> PutResult:
        check_object_name(name)
        if retain_until.tzinfo is None:
            raise ValueError("retain_until must be timezone-aware")
        retain_until = retain_until.astimezone(UTC)
        digest = _sha256(data)

        # Stat first: a re-upload after a crash finds its own bytes and must succeed without a
        # second version; different bytes must not become the "latest" version of an archive
        # object. (Two writers racing on one name could both pass this check; the spool has one
        # uploader per directory, and even then both versions would be kept under retention.)
        existing = self._stat_or_none(name)
        if existing is not None:
            return self._existing_put_result(name, data, digest, retain_until, existing)
        hidden = self._hidden_versions(name)
        if hidden:
            # Someone placed a delete marker over archived (and still retained) versions. Writing
            # now would make other bytes the visible content of an archived name: refuse, as for
            # any other conflict; the retained versions stay readable by version id.
            raise ArchiveConflictError(
                f"{name} was deleted (delete marker) in {self._bucket} over archived version(s) "
                f"{', '.join(hidden)}; not writing a new version under that name"
            )

        result = self._client.put_object(
            self._bucket,
            name,
            io.BytesIO(data),
            len(data),
            metadata={SHA256_METADATA: digest},
            retention=Retention(COMPLIANCE, retain_until),
        )
        # Read back, not trusted: a store that ignores the header, a proxy that strips it or a
        # bucket default applied instead would leave a deletable object reported as archived.
        # One more small request per object (about 1 ms against MinIO on loopback).
        until = self._verified_retention(name, result.version_id, retain_until)
        return PutResult(name, result.version_id, digest, len(data), until, created=True)

    def _existing_put_result(
        self, name: str, data: bytes, digest: str, retain_until: datetime, existing: Object
    ) -> PutResult:
        version_id = existing.version_id
        stored_digest = (existing.metadata or {}).get(f"x-amz-meta-{SHA256_METADATA}")
        if stored_digest is None:
            # Not written by vteller (no digest): compare the bytes themselves.
            same = existing.size == len(data) and self._get_raw(name, version_id) == data
        else:
            same = stored_digest == digest
        if not same:
            raise ArchiveConflictError(
                f"{name} is already archived in {self._bucket} with different content "
                f"(sha256 {stored_digest or 'unknown'}, ours {digest}); nothing was overwritten"
            )
        mode, current = self._retention_state_sync(name, version_id)
        refusal = None
        if mode != COMPLIANCE or current is None or current + _RETENTION_SLACK < retain_until:
            # COMPLIANCE retention may be extended, never shortened: the first upload may have
            # been made with an earlier date (or, outside vteller, without retention, or under
            # GOVERNANCE, which the store may refuse to turn into COMPLIANCE without a bypass).
            wanted = max(retain_until, current) if current is not None else retain_until
            try:
                self._client.set_object_retention(
                    self._bucket, name, Retention(COMPLIANCE, wanted), version_id=version_id
                )
            except S3Error as exc:
                refusal = f"{exc.code}: {exc.message}"
        current = self._verified_retention(name, version_id, retain_until, refusal)
        return PutResult(name, version_id, digest, len(data), current, created=False)

    def _verified_retention(
        self,
        name: str,
        version_id: str | None,
        retain_until: datetime,
        refusal: str | None = None,
    ) -> datetime:
        """The retain-until date the store holds for `name`, if it is COMPLIANCE retention at
        least until `retain_until`; RetentionNotVerifiedError, naming the fix, otherwise."""
        mode, until = self._retention_state_sync(name, version_id)
        if mode == COMPLIANCE and until is not None and until + _RETENTION_SLACK >= retain_until:
            return until
        found = "no retention" if until is None else f"{mode} retention until {until:{_TAG_TIME}}"
        changing = f" (the store refused to change it: {refusal})" if refusal else ""
        raise RetentionNotVerifiedError(
            f"{name} reached bucket {self._bucket}, but its retention read back is {found}"
            f"{changing} where COMPLIANCE until {retain_until:{_TAG_TIME}} was asked for, so it "
            "could be deleted; it stays in the spool and is tried again. Check the bucket's "
            "default retention (mc retention info --default), that the store keeps the Object "
            "Lock headers of an upload and that no proxy in front of it strips them; an object "
            "already under GOVERNANCE needs COMPLIANCE retention set on it by an account allowed "
            "to bypass governance (mc retention set --bypass compliance; docs/deployment.md)."
        )

    def get_sync(self, name: str, version_id: str | None = None) -> bytes:
        """Blocking `get`; call it from a thread."""
        return self._translate(lambda: self._get_checked(name, version_id))

    def _get_raw(self, name: str, version_id: str | None = None) -> bytes:
        data, _ = self._get_with_digest(name, version_id)
        return data

    def _get_with_digest(self, name: str, version_id: str | None) -> tuple[bytes, str | None]:
        response = self._client.get_object(self._bucket, name, version_id=version_id)
        try:
            data = response.read()
            digest = response.headers.get(f"x-amz-meta-{SHA256_METADATA}")
        finally:
            response.close()
            response.release_conn()
        return data, digest

    def _get_checked(self, name: str, version_id: str | None) -> bytes:
        data, digest = self._get_with_digest(name, version_id)
        if digest is not None and digest != _sha256(data):
            raise ArchiveIntegrityError(
                f"{name} in {self._bucket}: content does not match its recorded sha256"
            )
        return data

    def list_sync(self, prefix: str = "") -> builtins.list[str]:
        """Blocking `list`; call it from a thread."""
        return self._translate(
            lambda: sorted(
                str(item.object_name)
                for item in self._client.list_objects(
                    self._bucket, prefix=prefix or None, recursive=True
                )
                if item.object_name is not None and not item.is_dir
            )
        )

    def _retention_sync(self, name: str, version_id: str | None) -> datetime | None:
        return self._retention_state_sync(name, version_id)[1]

    def _retention_state_sync(
        self, name: str, version_id: str | None
    ) -> tuple[str | None, datetime | None]:
        """(mode, retain-until) of one object version; (None, None) when it has no retention."""
        try:
            retention = self._client.get_object_retention(self._bucket, name, version_id=version_id)
        except S3Error as exc:
            if exc.code == "NoSuchObjectLockConfiguration":
                return None, None
            raise
        if retention is None or retention.retain_until_date is None:
            return None, None
        until: datetime = retention.retain_until_date
        return retention.mode, until if until.tzinfo else until.replace(tzinfo=UTC)

    def _versions_sync(self, prefix: str) -> builtins.list[StoredVersion]:
        check_object_name(prefix.rstrip("/") + "/x")
        return [
            StoredVersion(
                str(item.object_name), item.version_id, item.size or 0, item.is_delete_marker
            )
            for item in self._client.list_objects(
                self._bucket, prefix=prefix, recursive=True, include_version=True
            )
            if item.object_name is not None and not item.is_dir
        ]

    def _version_lock_sync(self, name: str, version_id: str | None) -> VersionLock:
        mode, until = self._retention_state_sync(name, version_id)
        held = bool(self._client.is_object_legal_hold_enabled(self._bucket, name, version_id))
        return VersionLock(mode, until, held)

    def _delete_version_sync(self, name: str, version_id: str | None) -> None:
        try:
            self._client.remove_object(self._bucket, name, version_id=version_id)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchVersion"):
                return  # deleted by an earlier, interrupted run
            if exc.code in ("AccessDenied", "ObjectLocked", "InvalidRequest"):
                # MinIO: "AccessDenied: Object is WORM protected and cannot be overwritten".
                raise DeleteRefusedError(
                    f"the store refused to delete {name} (version {version_id}): "
                    f"{describe_error(exc)}"
                ) from exc
            raise

    def _set_legal_hold_sync(
        self, name: str, on: bool, reason: str | None, version_id: str | None
    ) -> None:
        if on:
            self._client.enable_object_legal_hold(self._bucket, name, version_id=version_id)
            # Read back like retention: a hold the store did not keep must not be reported set.
            if not self._client.is_object_legal_hold_enabled(self._bucket, name, version_id):
                raise RetentionNotVerifiedError(
                    f"the legal hold of {name} in bucket {self._bucket} reads back as off after "
                    "it was set: check that the store keeps Object Lock legal holds and that no "
                    "proxy in front of it drops the request"
                )
        else:
            self._client.disable_object_legal_hold(self._bucket, name, version_id=version_id)
        # Keep other tags; record the reason of the hold that is now in force (none when cleared).
        tags: Tags = Tags.new_object_tags()
        existing: dict[str, str] = dict(
            self._client.get_object_tags(self._bucket, name, version_id=version_id) or {}
        )
        for key, value in existing.items():
            if key not in (LEGAL_HOLD_REASON_TAG, LEGAL_HOLD_AT_TAG):
                tags[key] = value
        if on:
            if reason:
                tags[LEGAL_HOLD_REASON_TAG] = encode_tag_value(reason)
            tags[LEGAL_HOLD_AT_TAG] = datetime.now(UTC).strftime(_TAG_TIME)
        if tags:
            self._client.set_object_tags(self._bucket, name, tags, version_id=version_id)
        else:
            self._client.delete_object_tags(self._bucket, name, version_id=version_id)

    def _legal_hold_sync(self, name: str, version_id: str | None) -> LegalHold:
        on = bool(self._client.is_object_legal_hold_enabled(self._bucket, name, version_id))
        if not on:
            return LegalHold(on=False)
        tags: dict[str, str] = dict(
            self._client.get_object_tags(self._bucket, name, version_id=version_id) or {}
        )
        since = tags.get(LEGAL_HOLD_AT_TAG)
        try:
            since_at = datetime.strptime(since, _TAG_TIME).replace(tzinfo=UTC) if since else None
        except ValueError:  # a tag edited by hand: the hold itself is what matters
            since_at = None
        reason = tags.get(LEGAL_HOLD_REASON_TAG)
        return LegalHold(
            on=True, reason=decode_tag_value(reason) if reason else None, since=since_at
        )


class S3Archive:
    """The objects of one archive (everything under `prefix`), for the verifier.

    Satisfies recorder/verify.py's reader protocol: `list_names()` and `read(name)`, with names
    relative to the prefix. These are blocking calls (the verifier is synchronous); from async
    code, run them with `asyncio.to_thread`. `read` checks each object's recorded SHA-256.
    """

    def __init__(self, bucket: ArchiveBucket, prefix: str) -> None:
        check_object_name(prefix.rstrip("/") + "/x")
        self._bucket = bucket
        self._prefix = prefix.rstrip("/") + "/"

    @property
    def prefix(self) -> str:
        return self._prefix

    def list_names(self) -> list[str]:
        return [name[len(self._prefix) :] for name in self._bucket.list_sync(self._prefix)]

    def read(self, name: str) -> bytes:
        return self._bucket.get_sync(self._prefix + check_object_name(name))
