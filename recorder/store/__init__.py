"""Archive store: recordings in S3 under COMPLIANCE Object Lock, behind a durable local spool.

- `config`: `StoreSettings` (nested as `settings.store`; also reads `VTELLER_S3_*`).
- `retention`: how long a recording is retained, from its product.
- `s3`: `ArchiveBucket` (put/get/list/legal hold over the `minio` SDK) and `S3Archive` (reader of
  one archive for the verifier).
- `spool`: `Spool` (durable local queue) and `Uploader` (spool → bucket with retries).
"""
