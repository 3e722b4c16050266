"""`vteller verify` and `vteller export`: for auditors, regulators and courts.

ARCHIVE is a local directory (an export package) or `s3://BUCKET/PREFIX` in the archive store
(the connection comes from the server's settings: VTELLER_S3_*, VTELLER_STORE__* or the TOML
file's [store]).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from recorder.export import ExportError, export_archive
from recorder.playback import MediaInspector
from recorder.seal.keyring import KeyringError, LocalKeyring
from recorder.seal.signing import load_public_keys
from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket, ArchiveStoreError, S3Archive
from recorder.verify import ArchiveReader, DirectoryArchive, verify_archive

# A package can carry any key, and a key that comes with the package vouches for nothing.
PACKAGE_KEY_ORIGIN = "taken from the package itself: compare it with the bank's published key id"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = commands.add_parser(
        "verify",
        help="verify a sealed recording (signature, chain link, every segment and attachment)",
        description="Verify a sealed recording: the manifest signature, the link to the previous "
        "manifest, and the size and hash of every segment and attachment (the customer's "
        "signature images); with --keyring also decrypt them all and check that the media "
        "plays. Prints the id of the key that signed the manifest. "
        "Without --keys, an export package is checked against the key it ships with, which "
        "proves nothing by itself: whoever altered the package could have re-signed it and "
        "shipped their own key, so compare the printed key id with the one the bank published, "
        "or pass the bank's key with --keys. Exits 0 only when everything holds.",
    )
    verify.add_argument("archive", help="export directory, or s3://BUCKET/archives/ARCHIVE_ID")
    verify.add_argument(
        "--keys",
        type=Path,
        help="trusted public key file or directory, e.g. the bank's published key (default: "
        "the package's own ARCHIVE/keys, or {data_dir}/keys/public for s3://)",
    )
    verify.add_argument("--keyring", type=Path, help="keyring file: also decrypt and play")
    previous = verify.add_mutually_exclusive_group()
    previous.add_argument("--previous", type=Path, help="the previous archive's manifest.json")
    previous.add_argument(
        "--previous-sha256",
        type=_sha256_hex,
        metavar="HEX",
        help="the previous manifest's SHA-256, when that archive was purged at the end of its "
        "retention: the auditor portal's verification of this archive shows it (tombstone: "
        "manifest sha256 ...), and so does the purge's archive.purged audit entry",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(tool=_verify)

    export = commands.add_parser(
        "export",
        help="write a self-contained, verifiable package of one recording",
        description="Write the encrypted segments and attachments, manifest, signature, public "
        "key and a README "
        "for the recipient into OUT_DIR; `vteller verify OUT_DIR` checks it offline.",
    )
    export.add_argument("archive", help="s3://BUCKET/archives/ARCHIVE_ID or a directory")
    export.add_argument("out_dir", type=Path, help="a new (or empty) directory")
    export.add_argument("--keys", type=Path, help="public keys (default: {data_dir}/keys/public)")
    export.set_defaults(tool=_export)


def _sha256_hex(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a SHA-256: 64 hexadecimal digits")
    return text.lower()


def run(args: argparse.Namespace, data_dir: Path, store: StoreSettings) -> int:
    try:
        code: int = args.tool(args, data_dir, store)
    except (KeyringError, ExportError, ArchiveStoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


def _reader(location: str, store: StoreSettings) -> ArchiveReader:
    """An export package's directory, or `s3://BUCKET/PREFIX` through `store`'s connection."""
    if location.startswith("s3://"):
        bucket_name, _, prefix = location.removeprefix("s3://").partition("/")
        if not prefix:
            raise ValueError("name the archive: s3://BUCKET/archives/ARCHIVE_ID")
        bucket = ArchiveBucket.from_settings(store.model_copy(update={"bucket": bucket_name}))
        return S3Archive(bucket, prefix)
    path = Path(location)
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{path} holds no manifest.json: is it an export package?")
    return DirectoryArchive(path)


def _public_keys(args: argparse.Namespace, data_dir: Path) -> tuple[dict[str, bytes], Path, bool]:
    """The public keys to verify with, where they are, and whether the package supplied them."""
    in_store = args.archive.startswith("s3://")
    default = data_dir / "keys" / "public" if in_store else Path(args.archive) / "keys"
    path: Path = args.keys or default
    if not path.exists():
        raise ValueError(f"no public keys at {path}; name them with --keys")
    # Also when --keys names the package's own keys: what matters is who supplied the key.
    from_package = not in_store and path.resolve().is_relative_to(Path(args.archive).resolve())
    return load_public_keys(path), path, from_package


def _verify(args: argparse.Namespace, data_dir: Path, store: StoreSettings) -> int:
    keyring = LocalKeyring.open(args.keyring) if args.keyring else None
    inspector = MediaInspector() if keyring is not None else None
    public_keys, keys_path, from_package = _public_keys(args, data_dir)
    key_origin = PACKAGE_KEY_ORIGIN if from_package else f"one of the public keys in {keys_path}"
    report = verify_archive(
        _reader(args.archive, store),
        public_keys,
        keyring=keyring,
        previous_manifest=args.previous.read_bytes() if args.previous else None,
        previous_sha256=args.previous_sha256,
        inspector=inspector,
    )
    media = inspector.summary.describe() if inspector and inspector.summary else []
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "archive_id": report.manifest.archive_id if report.manifest else None,
                    "signing_key_id": report.signing_key_id,
                    "keys_from_package": from_package,
                    "problems": [str(p) for p in report.problems],
                    "notes": report.notes + media,
                    "decrypted": report.decrypted,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        print(report.render(key_origin))
        for line in media:
            print(f"  {line}")
    return 0 if report.ok else 1


def _export(args: argparse.Namespace, data_dir: Path, store: StoreSettings) -> int:
    keys_dir: Path = args.keys or data_dir / "keys" / "public"
    pems = list(load_public_keys(keys_dir).values())
    out = export_archive(_reader(args.archive, store), args.out_dir, pems)
    print(f"exported to {out}; check it with: vteller verify {out}")
    return 0
