"""`vteller kyc ...`: read an ID card photo, or compare an ID photo with a face, from the shell.

For operators checking a deployment's models and for investigating a customer's complaint.
`add_commands(commands)` registers `run` as the `kyc` parser's `run` default, so server/cli.py's
`main` dispatches to it like its own commands (`args.run(args, settings)`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.identity.images import ImageInputError, decode_image
from server.identity.models import ModelError

if TYPE_CHECKING:
    from server.settings import Settings


def add_commands(subparsers: Any) -> None:
    """Add `kyc ocr` and `kyc match` to the `vteller` parser's subparsers."""
    kyc = subparsers.add_parser(
        "kyc",
        help="identity verification tools (ID card OCR, face match)",
        description="Identity verification tools. Models come from the pinned packages, or "
        "from the directories configured in the identity settings (VTELLER_IDENTITY__*; "
        "docs/identity.md).",
    )
    kyc.set_defaults(kyc="help", kyc_parser=kyc, run=run)
    sub = kyc.add_subparsers(title="kyc commands")

    ocr = sub.add_parser(
        "ocr",
        help="read an ID card photo and check it",
        description="Read the fields of a resident ID card photo (either side; the side is "
        "recognised) and check them: number checksum, birth date and sex against the number, "
        "validity. Exit status 0: no problem; 1: problems found; 2: the input or models are "
        "unusable.",
    )
    ocr.add_argument("image", type=Path, help="photo of one side of the card (JPEG/PNG)")
    ocr.add_argument("--back", type=Path, help="photo of the other side, checked together")
    ocr.add_argument(
        "--today",
        type=date.fromisoformat,
        default=None,
        help="date for the expiry check, YYYY-MM-DD (default: today in China, Asia/Shanghai)",
    )
    ocr.add_argument("--json", action="store_true", help="print one JSON object")
    ocr.set_defaults(kyc="ocr")

    m = sub.add_parser(
        "match",
        help="compare the face on an ID card with a face photo",
        description="Decide whether FACE_IMAGE shows the person on ID_IMAGE (a photo of the "
        "card's front, or of its portrait). Prints pass/fail and the reason; the similarity "
        "score only with --show-scores (operators only: never give it to customers). Exit "
        "status 0: pass; 1: fail; 2: unusable input or models.",
    )
    m.add_argument("id_image", type=Path, metavar="ID_IMAGE")
    m.add_argument("face_image", type=Path, metavar="FACE_IMAGE")
    m.add_argument(
        "--engine",
        choices=("yunet", "insightface"),
        default=None,
        help="face engine (default: the identity.face_engine setting, else yunet)",
    )
    m.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="override the engine's calibrated threshold (testing only)",
    )
    m.add_argument(
        "--show-scores",
        action="store_true",
        help="also print the score, threshold and model versions",
    )
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(kyc="match")


def _load(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageInputError(
            "unreadable_file", "无法读取文件", f"cannot read {path}: {exc.strerror}; check the path"
        ) from exc
    return decode_image(data)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the chosen `kyc` command; return the exit status."""
    from server.identity.engines import IdentityEngines

    if getattr(args, "kyc", "help") == "help":
        args.kyc_parser.print_help()
        return 2
    engines = IdentityEngines(settings.identity)
    try:
        if args.kyc == "ocr":
            return _ocr(args, engines)
        return _match(args, engines)
    except ImageInputError as exc:
        print(f"error: {exc.message_en} ({exc.code})", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engines.close()


def _ocr(args: argparse.Namespace, engines: Any) -> int:
    from server.identity.idcard import card_today, check_back, check_front
    from server.identity.ocr.reader import assess, reading_problems

    today = args.today or card_today()
    first = engines.read_card(_load(args.image))
    second = engines.read_card(_load(args.back)) if args.back else None
    if second is not None:
        # The two photos must be the two sides, in either order: two of one side are checked as
        # front and back, so the customer is told which side is missing.
        if first.side == "back" or second.side == "front":
            first, second = second, first
        readings = [first, second]
        problems = assess(first, second, today).problems
    else:
        readings = [first]
        problems = reading_problems(first, first.side or "front")
        if first.side == "front":
            problems += check_front(first.fields, today)
        elif first.side == "back":
            problems += check_back(first.fields, today)
    fields: dict[str, object] = {}
    for r in readings:
        for k, v in r.fields.to_dict().items():
            if v not in (None, False) or k not in fields:
                fields[k] = v
    report = {
        "sides": [r.side for r in readings],
        "rotated_180": [r.rotated_180 for r in readings],
        "fields": fields,
        "problems": [p.to_dict() for p in problems],
        "accepted": not problems,
        "model_versions": engines.ocr().model_versions,
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print("sides: " + ", ".join(str(r.side or "unknown") for r in readings))
        for k, v in fields.items():
            print(f"  {k}: {'' if v is None else v}")
        if problems:
            print("problems:")
            for p in problems:
                print(f"  [{p.reason.value}] {p.message_zh} / {p.message_en}")
        else:
            print("no problems found")
    return 0 if not problems else 1


def _match(args: argparse.Namespace, engines: Any) -> int:
    result = engines.match(
        _load(args.id_image), _load(args.face_image), args.engine, args.threshold
    )
    out = result.audit_dict() if args.show_scores else result.public_dict()
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(
            f"{result.decision.value}: {result.reason.value} — {result.message_zh} / "
            f"{result.message_en}"
        )
        if args.show_scores:
            print(
                f"  score {result.score if result.score is None else round(result.score, 4)}"
                f" threshold {result.threshold} engine {result.engine}"
            )
            print("  models " + ", ".join(f"{k}={v}" for k, v in result.model_versions.items()))
    return 0 if result.decision.value == "pass" else 1
