"""`vteller compliance ...`: tools for compliance officers tuning scripts.

    vteller compliance scripts [--scripts-dir DIR]
    vteller compliance check-audio --script NAME --moment ID --speaker teller|customer FILE \
        [--set NAME=VALUE ...] [--json]

check-audio exits 0 for pass, 1 for fail, 3 for needs_review, 2 for a usage or setup error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Protocol

from compliance.sales_script import SPEAKERS, ScriptError, available_scripts, load_script

EXIT_CODES = {"pass": 0, "fail": 1, "needs_review": 3}
SCRIPTS_DIR_VARIABLE = "VTELLER_COMPLIANCE_SCRIPTS_DIR"


class HasDataDir(Protocol):
    """The part of server.settings.Settings this command needs (no import of the server)."""

    @property
    def data_dir(self) -> Path: ...


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
    check.set_defaults(run=run, compliance_tool=_check_audio)

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

    if args.scripts_dir is None and os.environ.get(SCRIPTS_DIR_VARIABLE):
        args.scripts_dir = Path(os.environ[SCRIPTS_DIR_VARIABLE])
    try:
        code: int = args.compliance_tool(args, settings)
    except (ScriptError, ModelError, ValueError, OSError) as exc:
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
