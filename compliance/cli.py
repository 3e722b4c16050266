"""`vteller compliance ...`: tools for compliance officers tuning scripts, and the after-call
analysis of a recording.

    vteller compliance scripts [--scripts-dir DIR]
    vteller compliance check-audio --script NAME --moment ID --speaker teller|customer FILE \
        [--set NAME=VALUE ...] [--json]
    vteller compliance analyze ARCHIVE_OR_RECORDING [--keyring FILE] [--keys DIR] \
        [--manifest FILE] [--script ID] [--set NAME=VALUE ...] [--json] [--html FILE] \
        [--progress text|json|none]

check-audio exits 0 for pass, 1 for fail, 3 for needs_review, 2 for a usage or setup error.
analyze exits 0 for pass, 1 for fail or needs_review, 2 for an input it cannot analyse.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from compliance.sales_script import SPEAKERS, ScriptError, available_scripts, load_script

if TYPE_CHECKING:
    from recorder.store.config import StoreSettings

EXIT_CODES = {"pass": 0, "fail": 1, "needs_review": 3}
SCRIPTS_DIR_VARIABLE = "VTELLER_COMPLIANCE_SCRIPTS_DIR"


class HasDataDir(Protocol):
    """The part of server.settings.Settings this command needs (no import of the server)."""

    @property
    def data_dir(self) -> Path: ...

    @property
    def store(self) -> StoreSettings:
        """The archive store's connection, for `s3://` recordings."""
        ...


def model_cache_dir(data_dir: Path) -> Path:
    return data_dir / "compliance" / "models"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compliance = commands.add_parser(
        "compliance",
        help="sales scripts and speech checks (dual recording compliance)",
        description="Sales scripts and speech checks. Scripts are built in; a directory of "
        f"YAML scripts named by --scripts-dir or ${SCRIPTS_DIR_VARIABLE} overrides them by id.",
    )
    tools = compliance.add_subparsers(title="compliance commands")

    scripts = tools.add_parser(
        "scripts",
        help="list and validate the available scripts",
        description="Load every script (built-in and configured), print id, version, title and "
        "moments, and exit 1 if any does not validate.",
    )
    _scripts_dir_option(scripts)
    scripts.set_defaults(run=run, compliance_tool=_scripts)

    check = tools.add_parser(
        "check-audio",
        help="judge one clip against one moment of a script",
        description="Recognise the speech in FILE (any audio format; 16 kHz mono is used) and "
        "judge it against the given speaker's line of one moment: pass, fail or needs_review, "
        "with the transcript, the matched phrases, the forced-alignment scores and the "
        "thresholds. Exit status: 0 pass, 1 fail, 3 needs_review, 2 error.",
    )
    check.add_argument("file", type=Path, help="audio of one speaker (WAV, WebM, ...)")
    check.add_argument("--script", required=True, help="script id, e.g. bank_wealth_product")
    check.add_argument("--moment", required=True, help="moment id, e.g. risk_disclosure")
    check.add_argument("--speaker", required=True, choices=SPEAKERS)
    check.add_argument(
        "--set",
        dest="values",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="value of a placeholder in the line, e.g. --set teller_name=王芳 (repeatable)",
    )
    check.add_argument(
        "--track",
        help="audio track of a multi-track file by title (e.g. 'customer microphone') or index",
    )
    check.add_argument("--json", action="store_true", help="print the verdict as JSON")
    _scripts_dir_option(check)
    # The speech model is reassembled into {data_dir}/compliance/models on first use: `vteller`
    # runs it only as the data directory's owner (server/commands.py, writes_data_dir).
    check.set_defaults(run=run, compliance_tool=_check_audio, writes_data_dir=check.prog)

    analyze = tools.add_parser(
        "analyze",
        help="judge a whole recording against its sales script (after the call)",
        description="Verify and decrypt a sealed recording (or take a decrypted one), recognise "
        "each speaker's microphone, count the faces on each camera, and judge every moment of "
        "the sales script: pass, fail or needs_review with the evidence. The script and its "
        "values come from the manifest (else the business's script), overridable here. Exit "
        "status: 0 pass, 1 fail or needs_review (a moment not marked counts), 2 an input that "
        "cannot be analysed (the message says what to fix).",
    )
    analyze.add_argument(
        "recording",
        metavar="ARCHIVE_OR_RECORDING",
        help="export package directory, s3://BUCKET/archives/ARCHIVE_ID, or a decrypted "
        ".webm (with --manifest)",
    )
    analyze.add_argument(
        "--keyring",
        type=Path,
        help="keyring file that decrypts the archive (default: {data_dir}/keys/keyring.json)",
    )
    analyze.add_argument(
        "--keys",
        type=Path,
        help="public key file or directory (default: ARCHIVE/keys, or {data_dir}/keys/public)",
    )
    analyze.add_argument(
        "--manifest",
        type=Path,
        help="the manifest.json of a decrypted .webm (default: manifest.json beside it)",
    )
    analyze.add_argument(
        "--script", help="judge against this script instead of the one the manifest names"
    )
    analyze.add_argument(
        "--set",
        dest="values",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a placeholder value, added to (or replacing) the manifest's (repeatable)",
    )
    analyze.add_argument("--json", action="store_true", help="print the report as JSON")
    analyze.add_argument("--html", type=Path, metavar="FILE", help="also write the report as HTML")
    analyze.add_argument(
        "--progress",
        choices=("text", "json", "none"),
        default="text",
        help="progress on stderr: text lines, one JSON object per line "
        '({"stage": ..., "fraction": "0.42"}), or none (default: text)',
    )
    _scripts_dir_option(analyze)
    analyze.set_defaults(run=run, compliance_tool=_analyze, writes_data_dir=analyze.prog)

    def show_help(_: argparse.Namespace, __: HasDataDir) -> int:
        compliance.print_help()
        return 2

    compliance.set_defaults(run=show_help)


def _scripts_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scripts-dir",
        type=Path,
        default=None,
        help=f"directory of the bank's YAML scripts (default: ${SCRIPTS_DIR_VARIABLE})",
    )


def run(args: argparse.Namespace, settings: HasDataDir) -> int:
    from compliance.asr import ModelError
    from compliance.recording import RecordingError
    from recorder.seal.keyring import KeyringError
    from recorder.store.s3 import ArchiveStoreError
    from server.identity.models import ModelError as FaceModelError

    if args.scripts_dir is None and os.environ.get(SCRIPTS_DIR_VARIABLE):
        args.scripts_dir = Path(os.environ[SCRIPTS_DIR_VARIABLE])
    if args.scripts_dir is None:
        # The server's setting, so that the analysis finds the scripts the recording used.
        args.scripts_dir = getattr(settings, "compliance_scripts_dir", None)
    try:
        code: int = args.compliance_tool(args, settings)
    except (
        ScriptError,
        ModelError,
        FaceModelError,
        RecordingError,
        KeyringError,
        ArchiveStoreError,
        ValueError,
        OSError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


def _scripts(args: argparse.Namespace, _: HasDataDir) -> int:
    broken = 0
    for name, path in sorted(available_scripts(args.scripts_dir).items()):
        try:
            script = load_script(name, args.scripts_dir)
        except ScriptError as exc:
            broken += 1
            print(f"INVALID {exc}")
            continue
        moments = ", ".join(m.id for m in script.moments)
        print(f"{script.label}  {script.title}  ({path})\n    {moments}")
    return 1 if broken else 0


def _parse_values(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--set {pair!r}: use NAME=VALUE")
        values[name.strip()] = value
    return values


def _check_audio(args: argparse.Namespace, settings: HasDataDir) -> int:
    from compliance.analyzer import check_line
    from compliance.asr import WhisperRecognizer, decode_audio

    script = load_script(args.script, args.scripts_dir)
    script.moment(args.moment).line(args.speaker)  # fail early, before loading the model
    values = _parse_values(args.values)
    track: int | str | None = args.track
    if isinstance(track, str) and track.isdigit():
        track = int(track)
    audio = decode_audio(args.file, track)
    recognizer = WhisperRecognizer.from_cache(model_cache_dir(settings.data_dir))
    verdict = check_line(recognizer, audio, script, args.moment, args.speaker, values)
    if args.json:
        print(json.dumps(verdict.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_verdict(verdict, args.file)
    return EXIT_CODES[verdict.decision]


def _print_verdict(verdict: object, file: Path) -> None:
    from compliance.analyzer import LineVerdict

    assert isinstance(verdict, LineVerdict)
    print(
        f"{verdict.decision.upper()}  {verdict.script} {verdict.moment} ({verdict.speaker})  {file}"
    )
    for reason in verdict.reasons:
        print(f"  - {reason}")
    print(f"expected: {verdict.expected}")
    print(f"speech:   {verdict.speech_seconds} s (minimum {verdict.min_seconds} s)")
    print("heard:")
    for segment in verdict.transcript:
        print(f"  {segment.start:7.2f}-{segment.end:7.2f} s  {segment.text}")
    if not verdict.transcript:
        print("  (nothing)")
    print("phrases:")
    for phrase in verdict.phrases:
        where = f" at {phrase.start}-{phrase.end} s" if phrase.start is not None else ""
        state = "negated" if phrase.negated else "found" if phrase.found else "missing"
        score = f" log-prob {phrase.logprob}" if phrase.logprob is not None else ""
        heard = f" heard {phrase.heard!r} (similarity {phrase.similarity})" if phrase.heard else ""
        note = f"; {phrase.note}" if phrase.note else ""
        print(f"  {phrase.kind:16} {state:8} {phrase.phrase}{heard}{where}{score}{note}")
    a = verdict.alignment
    if a is not None:
        print(
            f"alignment: {a.verdict}; mean log-prob {a.mean_logprob} (heard text "
            f"{a.heard_mean_logprob}, margin {a.margin}); weakest token {a.weakest_token!r} "
            f"p={a.weakest_probability}; window {a.window[0]}-{a.window[1]} s"
        )
    t = verdict.thresholds
    print(
        f"thresholds: similarity >= {t.match_similarity}; confirm log-prob >= "
        f"{t.confirm_logprob} or margin >= {t.confirm_margin}; reject log-prob < "
        f"{t.reject_logprob} and margin < {t.reject_margin}; phrase log-prob >= {t.phrase_logprob}"
    )
    print(f"model: {verdict.model_version}")


def _progress_printer(mode: str) -> Any:
    shown: dict[str, int] = {}

    def text(stage: str, fraction: float) -> None:
        # Every 10 %: a terminal, not a progress bar.
        tenth = int(10 * fraction)
        if shown.get(stage) != tenth:
            shown[stage] = tenth
            print(f"{stage}: {10 * tenth} %", file=sys.stderr, flush=True)

    def as_json(stage: str, fraction: float) -> None:
        line = json.dumps({"stage": stage, "fraction": f"{fraction:.2f}"})
        print(line, file=sys.stderr, flush=True)

    return {"text": text, "json": as_json}.get(mode)


def _analyze(args: argparse.Namespace, settings: HasDataDir) -> int:
    from compliance.asr import WhisperRecognizer
    from compliance.recording import (
        Recording,
        RecordingError,
        open_archive,
        open_decrypted,
        peek_manifest,
    )
    from compliance.report import (
        ScriptChoice,
        YuNetFaceCounter,
        analyze_recording,
        choose_script,
        exit_code,
        render_html,
    )
    from recorder.seal.keyring import LocalKeyring
    from recorder.seal.manifest import Manifest
    from recorder.seal.signing import load_public_keys
    from recorder.tools import _reader

    # faster-whisper logs every call at INFO on stderr, where the progress lines go.
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    values = _parse_values(args.values)
    progress = _progress_printer(args.progress)
    location: str = args.recording
    if args.html is not None and not args.html.parent.is_dir():
        raise RecordingError(f"--html {args.html}: the directory {args.html.parent} does not exist")

    def choose(manifest: Manifest) -> ScriptChoice:
        return choose_script(
            manifest, script_id=args.script, values=values, scripts_dir=args.scripts_dir
        )

    recording: Recording
    if not location.startswith("s3://") and location.endswith(".webm"):
        webm = Path(location)
        if not webm.is_file():
            raise RecordingError(f"{webm} does not exist")
        manifest_path: Path = args.manifest or webm.with_name("manifest.json")
        if not manifest_path.is_file():
            raise RecordingError(
                f"no manifest for {webm}: give the recording's manifest.json with --manifest FILE"
            )
        recording = open_decrypted(webm, manifest_path)
        choice = choose(recording.manifest)
        recognizer = WhisperRecognizer.from_cache(model_cache_dir(settings.data_dir))
        faces = YuNetFaceCounter()
    else:
        if not location.startswith("s3://") and Path(location).is_file():
            raise RecordingError(
                f"{location} is neither an archive nor a .webm recording: give an export "
                "package directory, s3://BUCKET/archives/ARCHIVE_ID, or a decrypted .webm"
            )
        reader = _reader(location, settings.store)
        choose(peek_manifest(reader))  # refuse early, before decrypting anything
        keyring_path: Path = args.keyring or settings.data_dir / "keys" / "keyring.json"
        if not keyring_path.is_file():
            raise RecordingError(
                f"no keyring at {keyring_path}: the recording must be decrypted to be analysed; "
                "name the keyring with --keyring FILE"
            )
        keyring = LocalKeyring.open(keyring_path)
        keys_path: Path = args.keys or (
            settings.data_dir / "keys" / "public"
            if location.startswith("s3://")
            else Path(location) / "keys"
        )
        if not keys_path.exists():
            raise RecordingError(f"no public keys at {keys_path}; name them with --keys")
        public_keys = load_public_keys(keys_path)
        recording = open_archive(reader, public_keys, keyring, progress=progress)
        try:
            choice = choose(recording.manifest)
            recognizer = WhisperRecognizer.from_cache(model_cache_dir(settings.data_dir))
            faces = YuNetFaceCounter()
        except BaseException:
            recording.close()
            raise
    with recording:
        document = analyze_recording(recording, choice, recognizer, faces, progress=progress)
    if args.html is not None:
        args.html.write_text(render_html(document), encoding="utf-8")
    if args.json:
        print(json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True))
    else:
        _print_report(document)
    return exit_code(document)


def _print_report(document: Mapping[str, Any]) -> None:
    script = document["script"]
    print(
        f"{document['decision'].upper()}  archive {document['archive_id']}  "
        f"script {script['id']}@{script['version']} ({script['chosen_by']})"
    )
    for moment in document["moments"]:
        span = moment["span_ms"]
        when = f"{span[0] / 1000:.1f}-{span[1] / 1000:.1f} s" if span else "not marked"
        print(f"  {moment['decision']:12} {moment['id']:24} {when}")
        for reason in moment["reasons"]:
            print(f"      - {reason}")
        for line in moment["lines"]:
            heard = " / ".join(s["text"] for s in line["transcript"]) or "(nothing)"
            print(f"      {line['speaker']}: {line['decision']}; heard: {heard}")
