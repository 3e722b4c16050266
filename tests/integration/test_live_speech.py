"""Live "disclosure not yet heard": the real server recognises the teller's microphone (Whisper
base, as after the call) while the risk disclosure is open, and tells the teller which required
phrases are still missing until they have been read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from compliance.asr import ensure_model
from compliance.cli import model_cache_dir
from tests.integration.test_call import _teller_and_customer
from tests.integration.test_compliance_analysis import SPEECH, _camera, _mark
from tests.integration.test_live_checks import _live_warning
from tests.integration.test_recording import _record, _sealed
from tests.support import server as support
from tests.support.bot import WavTrack

CODE = "disclosure_not_heard"


@pytest.fixture
async def listening(tmp_path: Path) -> AsyncIterator[support.RunningServer]:
    data_dir = tmp_path / "server"
    model = await asyncio.to_thread(ensure_model, tmp_path / "models")
    cache = model_cache_dir(data_dir)
    cache.mkdir(parents=True)
    (cache / model.name).symlink_to(model, target_is_directory=True)
    settings = support.test_settings(data_dir, live_speech=True)
    async with support.running_server(settings) as running:
        yield running


def _unheard(message: dict[str, Any]) -> dict[str, Any]:
    return next(w for w in message["warnings"] if w["code"] == CODE)


async def test_the_teller_is_told_which_disclosure_was_not_heard(
    listening: support.RunningServer,
) -> None:
    server = listening
    teller, customer, session_id = await _teller_and_customer(server)
    teller_mic = WavTrack()
    teller.audio, teller.video = teller_mic, _camera("biden.jpg")
    customer.video = _camera("obama.jpg")
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        await _record(server, teller, customer)

        # The consent moment (opened by the server) stays open too: what is said counts for the
        # moment started most recently, the one the teller's page shows.
        await _mark(teller, "risk_disclosure", "start")
        # The misleading reading: 投资没有风险 is not 产品有风险 (negation-aware), and neither
        # 理财非存款 nor 投资须谨慎 was said.
        teller_mic.say(SPEECH / "teller_misleading.wav")
        message = await _live_warning(teller, lambda codes: CODE in codes, timeout=90)
        # One warning, for that moment only (consent's own phrases are not asked for meanwhile).
        assert [w["moment"] for w in message["warnings"] if w["code"] == CODE] == [
            "risk_disclosure"
        ]
        warning = _unheard(message)
        assert warning["participant_id"] == teller.participant_id
        assert warning["missing"] == ["理财非存款", "产品有风险", "投资须谨慎"]
        assert 0 < warning["since_ms"] <= message["media_ms"]

        # The disclosure read in full: the warning ends.
        teller_mic.say(SPEECH / "teller_risk_disclosure.wav")
        await _live_warning(teller, lambda codes: CODE not in codes, timeout=90)

        await teller.send({"type": "recording_stop"})
        assert (await _sealed(teller))["state"] == "sealed"
    finally:
        await customer.close()
        await teller.close()

    events = await server.services.sessions.events(session_id)
    started = [e for e in events if e.type == "live_warning_started" and e.detail["code"] == CODE]
    ended = [e for e in events if e.type == "live_warning_ended" and e.detail["code"] == CODE]
    assert len(started) == 1 and len(ended) == 1
    assert started[0].participant_id == teller.participant_id
    assert started[0].detail["missing"] == ["理财非存款", "产品有风险", "投资须谨慎"]
    assert started[0].detail["archive_id"] and started[0].detail["moment"] == "risk_disclosure"
