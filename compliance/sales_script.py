"""Versioned sales scripts: the key moments of a dual recording and what must be said in each.

A script is a YAML file (`compliance/scripts/*.yaml` built in; a bank's own directory overrides a
built-in script of the same id). docs/compliance.md describes the format.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Speaker = Literal["teller", "customer"]
SPEAKERS: tuple[Speaker, ...] = ("teller", "customer")

# The moments the teller's page marks (web/common/recording.js MOMENTS). A script may add others:
# the page shows any moment the server reports.
STANDARD_MOMENTS = (
    "consent",
    "teller_identity",
    "customer_identity",
    "product_introduction",
    "risk_disclosure",
    "risk_tolerance",
    "voluntary_confirmation",
    "signature",
    "closing",
)

# One line is scored against at most one 30 s window of audio (Whisper's context); at a normal
# reading pace 120 characters take about 25 s, so longer texts must be split into several moments.
MAX_LINE_CHARS = 120

_ID = r"^[a-z][a-z0-9_]{0,63}$"


class ScriptError(ValueError):
    """A script that cannot be loaded or used; the message names the file and the field."""


class Line(BaseModel):
    """What one party must say within a moment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: Speaker
    # Alternatives: any one of them satisfies the line (a teller line usually has one text; a
    # customer line lists accepted answers such as 是的 / 我同意).
    say: list[str] = Field(min_length=1)
    # Phrases that must each occur, not negated (投资有风险 is not satisfied by 投资没有风险).
    must_include: list[str] = []
    # Phrases that must not occur, unless negated (不保本 is fine where 保本 is forbidden).
    must_not_include: list[str] = []
    # Shortest speech, in seconds, that can be a real reading of the line (rushing is a finding).
    min_seconds: float = Field(0.0, ge=0.0, le=120.0)

    @field_validator("say", "must_include", "must_not_include")
    @classmethod
    def _texts(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.strip():
                raise ValueError("empty text")
            if len(value) > MAX_LINE_CHARS:
                raise ValueError(
                    f"{value[:20]}… is {len(value)} characters; at most {MAX_LINE_CHARS} can be "
                    "verified at once (about 25 s of speech): split it into several moments"
                )
        return values


class Visibility(BaseModel):
    """Who must be on camera during the moment (checked by the face analyzer, not here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teller: bool = True
    customers: int = Field(1, ge=0, le=10)


class Moment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID)
    title: str = Field(min_length=1)
    lines: list[Line] = []
    visible: Visibility = Visibility(teller=True, customers=1)
    document_on_screen: bool = False
    signature_captured: bool = False

    @model_validator(mode="after")
    def _one_line_per_speaker(self) -> Moment:
        # A moment is judged per participant track, so each party has at most one line in it.
        speakers = [line.speaker for line in self.lines]
        for speaker in SPEAKERS:
            if speakers.count(speaker) > 1:
                raise ValueError(
                    f"moment {self.id!r} has {speakers.count(speaker)} {speaker} lines"
                )
        return self

    def line(self, speaker: Speaker) -> Line:
        for line in self.lines:
            if line.speaker == speaker:
                return line
        raise ScriptError(f"moment {self.id!r} has no {speaker} line")


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID)
    version: str = Field(min_length=1, max_length=32)
    title: str = Field(min_length=1)
    # Every {name} used in a text, with what it stands for; values come with each call.
    placeholders: dict[str, str] = {}
    # Phrases no teller line may contain anywhere in the script (misleading sales talk).
    forbidden: list[str] = []
    moments: list[Moment] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Script:
        ids = [moment.id for moment in self.moments]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate moment ids: {', '.join(duplicates)}")
        for name in self.placeholders:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"placeholder name {name!r}: use lower_case letters and _")
        for moment in self.moments:
            for line in moment.lines:
                for text in [*line.say, *line.must_include, *line.must_not_include]:
                    unknown = sorted(set(placeholders_in(text)) - set(self.placeholders))
                    if unknown:
                        raise ValueError(
                            f"moment {moment.id!r}: placeholder {{{unknown[0]}}} is not declared "
                            "in `placeholders`"
                        )
        return self

    @property
    def label(self) -> str:
        return f"{self.id}@{self.version}"

    def moment(self, moment_id: str) -> Moment:
        for moment in self.moments:
            if moment.id == moment_id:
                return moment
        known = ", ".join(m.id for m in self.moments)
        raise ScriptError(f"script {self.id!r} has no moment {moment_id!r} (it has: {known})")

    def forbidden_for(self, line: Line) -> list[str]:
        # The script-wide list is about what staff say; customers' lines carry their own.
        extra = self.forbidden if line.speaker == "teller" else []
        return [*line.must_not_include, *(p for p in extra if p not in line.must_not_include)]


def placeholders_in(text: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name]
    except ValueError as exc:  # an unbalanced brace
        raise ValueError(f"{text[:20]}…: {exc}") from exc


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill the placeholders of one text; every placeholder needs a value."""
    missing = [name for name in placeholders_in(text) if name not in values]
    if missing:
        raise ScriptError(
            "no value for "
            + ", ".join(f"{{{m}}}" for m in dict.fromkeys(missing))
            + " (give one with --set NAME=VALUE)"
        )
    return text.format_map(dict(values))


def parse_script(data: object, source: str) -> Script:
    try:
        return Script.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ScriptError(f"{source}: {problems}") from None


def load_script_file(path: Path) -> Script:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScriptError(f"{path}: {exc}") from None
    script = parse_script(data, str(path))
    if script.id != path.stem:
        # The file name is how scripts are looked up, so it must not disagree with the content.
        raise ScriptError(f"{path}: id {script.id!r} differs from the file name {path.stem!r}")
    return script


def _builtin_dir() -> Path:
    return Path(str(resources.files("compliance") / "scripts"))


def _directories(scripts_dir: Path | None) -> Iterable[Path]:
    if scripts_dir is not None:
        yield scripts_dir
    yield _builtin_dir()


def available_scripts(scripts_dir: Path | None = None) -> dict[str, Path]:
    """Script id -> file; a configured directory's scripts take precedence over built-in ones."""
    found: dict[str, Path] = {}
    for directory in _directories(scripts_dir):
        if not directory.is_dir():
            raise ScriptError(f"scripts directory {directory} does not exist")
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def load_script(name: str, scripts_dir: Path | None = None) -> Script:
    if not re.fullmatch(_ID, name):
        raise ScriptError(f"{name!r} is not a script id")
    scripts = available_scripts(scripts_dir)
    if name not in scripts:
        raise ScriptError(f"no script {name!r}; available: {', '.join(sorted(scripts))}")
    return load_script_file(scripts[name])
