"""Which sales script a recording follows, and the values of its placeholders.

The teller's page shows the script's moments and the text to read; the recording's manifest
carries the script id, version and values (its `compliance` object), so the after-call analysis
(`vteller compliance analyze`) judges exactly what was meant to be said, and can be re-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compliance.sales_script import Script, ScriptError, load_script, placeholders_in
from server.db.models import CallSession
from server.signaling.protocol import ProtocolError

# The shipped script for each business of an invitation; a bank overrides them by id in its
# scripts directory (settings.compliance_scripts_dir).
BUSINESS_SCRIPTS = {
    "wealth": "bank_wealth_product",
    "insurance": "bank_agent_life_insurance",
    "general": "general_service",
}


def choose(business: str, requested: str | None, scripts_dir: Path | None) -> Script:
    name = requested or BUSINESS_SCRIPTS.get(business, "general_service")
    try:
        return load_script(name, scripts_dir)
    except ScriptError as exc:
        raise ProtocolError("invalid_message", f"script: {exc}", "recording_start") from exc


def known_values(session: CallSession, bank_name: str) -> dict[str, str]:
    """What the server knows for the common placeholders; the teller supplies the rest."""
    teller = next((p.display_name for p in session.participants if p.role == "teller"), "")
    values = {"bank_name": bank_name, "teller_name": teller, "customer_name": session.customer_name}
    return {k: v for k, v in values.items() if v}


def used_placeholders(script: Script) -> list[str]:
    names: list[str] = []
    for moment in script.moments:
        for line in moment.lines:
            for text in [*line.say, *line.must_include, *line.must_not_include]:
                names += [n for n in placeholders_in(text) if n not in names]
    return names


def context(script: Script, values: dict[str, str]) -> dict[str, Any]:
    """The manifest's `compliance` object. Placeholders without a value are listed as
    `missing`: the recording still runs (a recording is never refused for want of product
    data), and the analysis marks the lines that need them for review."""
    used = used_placeholders(script)
    return {
        "version": 1,
        "script": script.id,
        "script_version": script.version,
        "values": {n: values[n] for n in used if values.get(n)},
        "missing": [n for n in used if not values.get(n)],
    }


def view(script: Script, values: dict[str, str]) -> dict[str, Any]:
    """The script for the teller's page: moments, who says what (templates), placeholders."""
    return {
        "id": script.id,
        "version": script.version,
        "title": script.title,
        "placeholders": [
            {"name": n, "label": script.placeholders.get(n, n), "value": values.get(n, "")}
            for n in used_placeholders(script)
        ],
        "moments": [
            {
                "id": m.id,
                "title": m.title,
                "lines": [
                    {
                        "speaker": line.speaker,
                        "say": list(line.say),
                        "min_seconds": line.min_seconds,
                    }
                    for line in m.lines
                ],
                "document_on_screen": m.document_on_screen,
                "signature_captured": m.signature_captured,
            }
            for m in script.moments
        ],
    }
