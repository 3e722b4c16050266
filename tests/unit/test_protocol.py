"""Signaling protocol v1 validation (docs/protocol.md 2.1, 2.2, 2.3 and 2.6)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from server.audit.log import AuditUnavailable
from server.signaling.protocol import (
    CLIENT_TYPES,
    MAX_SDP_BYTES,
    PROTOCOL_VERSION,
    Answer,
    Chat,
    End,
    Ice,
    IceCandidate,
    Join,
    Leave,
    Ping,
    ProtocolError,
    ScreenShare,
    error_message,
    parse_client_message,
    server_message,
)

CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"


def frame(**fields: Any) -> str:
    return json.dumps({"v": 1, **fields})


def rejected(raw: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw)
    return caught.value


# -- every valid message ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "join"}, Join(v=1, type="join")),
        ({"type": "answer", "sdp": "v=0\r\n"}, Answer(v=1, type="answer", sdp="v=0\r\n")),
        ({"type": "ice", "candidate": None}, Ice(v=1, type="ice", candidate=None)),
        (
            {"type": "ice", "candidate": {"candidate": CANDIDATE, "sdpMid": "0"}},
            Ice(
                v=1,
                type="ice",
                candidate=IceCandidate(candidate=CANDIDATE, sdpMid="0", sdpMLineIndex=None),
            ),
        ),
        (
            {"type": "ice", "candidate": {"candidate": CANDIDATE, "sdpMLineIndex": 0}},
            Ice(
                v=1,
                type="ice",
                candidate=IceCandidate(candidate=CANDIDATE, sdpMid=None, sdpMLineIndex=0),
            ),
        ),
        ({"type": "chat", "text": "您好"}, Chat(v=1, type="chat", text="您好")),
        (
            {"type": "screen_share", "active": True},
            ScreenShare(v=1, type="screen_share", active=True),
        ),
        (
            {"type": "screen_share", "active": False},
            ScreenShare(v=1, type="screen_share", active=False),
        ),
        ({"type": "leave"}, Leave(v=1, type="leave")),
        ({"type": "end"}, End(v=1, type="end")),
        ({"type": "ping"}, Ping(v=1, type="ping")),
    ],
)
def test_every_client_message_type_parses(fields: dict[str, Any], expected: object) -> None:
    parsed = parse_client_message(frame(**fields))
    assert type(parsed) is type(expected)
    assert parsed == expected


def test_browser_candidate_json_with_extra_keys_is_accepted() -> None:
    # RTCIceCandidate.toJSON() also carries usernameFragment; the server does not need it.
    browser = {
        "candidate": CANDIDATE,
        "sdpMid": "0",
        "sdpMLineIndex": 0,
        "usernameFragment": "abcd",
    }
    parsed = parse_client_message(frame(type="ice", candidate=browser))
    assert isinstance(parsed, Ice)
    assert parsed.candidate == IceCandidate(candidate=CANDIDATE, sdpMid="0", sdpMLineIndex=0)


def test_browser_end_of_candidates_marker_is_accepted() -> None:
    parsed = parse_client_message(
        frame(type="ice", candidate={"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0})
    )
    assert isinstance(parsed, Ice) and parsed.candidate is not None
    assert parsed.candidate.candidate == ""


def test_limits_are_inclusive() -> None:
    chat = parse_client_message(frame(type="chat", text="字" * 2000))
    assert isinstance(chat, Chat) and len(chat.text) == 2000
    answer = parse_client_message(frame(type="answer", sdp="a" * MAX_SDP_BYTES))
    assert isinstance(answer, Answer) and len(answer.sdp) == 32 * 1024


# -- framing errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["", "not json", "{", '{"v": 1, "type": "ping"', "{'v': 1, 'type': 'ping'}"]
)
def test_bad_json(raw: str) -> None:
    error = rejected(raw)
    assert (error.code, error.ref, error.fatal) == ("bad_json", None, False)
    assert error.message


@pytest.mark.parametrize("raw", ["[]", '[{"v": 1, "type": "ping"}]', "1", '"ping"', "null", "true"])
def test_non_object_is_bad_json(raw: str) -> None:
    error = rejected(raw)
    assert (error.code, error.fatal) == ("bad_json", False)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "ping"},
        {"v": 2, "type": "ping"},
        {"v": 0, "type": "ping"},
        {"v": "1", "type": "ping"},
        {"v": None, "type": "ping"},
        {"v": [1], "type": "ping"},
        {"v": True, "type": "ping"},
        {"v": 1.5, "type": "ping"},
    ],
)
def test_wrong_or_missing_version_is_fatal(data: dict[str, Any]) -> None:
    error = rejected(json.dumps(data))
    assert error.code == "unsupported_version"
    assert error.fatal is True
    assert error.ref == "ping"
    assert str(PROTOCOL_VERSION) in error.message


def test_version_is_checked_before_the_type() -> None:
    error = rejected(json.dumps({"v": 2, "type": "warp"}))
    assert (error.code, error.ref, error.fatal) == ("unsupported_version", "warp", True)


@pytest.mark.parametrize(
    ("data", "ref"),
    [
        ({"v": 1, "type": "offer", "sdp": "v=0"}, "offer"),  # server-to-client only
        ({"v": 1, "type": "pong"}, "pong"),
        ({"v": 1, "type": "JOIN"}, "JOIN"),
        ({"v": 1, "type": ""}, ""),
        ({"v": 1}, None),
        ({"v": 1, "type": 7}, None),
        ({"v": 1, "type": None}, None),
    ],
)
def test_unknown_type_is_invalid_message(data: dict[str, Any], ref: str | None) -> None:
    error = rejected(json.dumps(data))
    assert (error.code, error.ref, error.fatal) == ("invalid_message", ref, False)
    assert "type" in error.message


# -- field validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "answer"}, "sdp"),
        ({"type": "ice"}, "candidate"),
        ({"type": "chat"}, "text"),
        ({"type": "screen_share"}, "active"),
    ],
)
def test_missing_field_is_named(fields: dict[str, Any], field: str) -> None:
    error = rejected(frame(**fields))
    assert (error.code, error.ref, error.fatal) == ("invalid_message", fields["type"], False)
    assert error.message.startswith(f"{field}:")
    assert "required" in error.message.lower()


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "join", "session": "s_1"},
        {"type": "ping", "id": 1},
        {"type": "leave", "reason": "bye"},
        {"type": "end", "force": True},
        {"type": "chat", "text": "hi", "to": "p_1"},
        {"type": "answer", "sdp": "v=0", "sdpType": "answer"},
        {"type": "screen_share", "active": True, "track": "x"},
        {"type": "ice", "candidate": None, "extra": 1},
    ],
)
def test_extra_field_is_refused_and_named(fields: dict[str, Any]) -> None:
    extra = next(key for key in fields if key not in ("type", "text", "sdp", "active", "candidate"))
    error = rejected(frame(**fields))
    assert (error.code, error.ref, error.fatal) == ("invalid_message", fields["type"], False)
    assert error.message.startswith(f"{extra}:")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "chat", "text": "x" * 2001}, "text"),
        ({"type": "chat", "text": ""}, "text"),
        ({"type": "chat", "text": 42}, "text"),
        ({"type": "chat", "text": None}, "text"),
        ({"type": "answer", "sdp": "a" * (MAX_SDP_BYTES + 1)}, "sdp"),
        ({"type": "answer", "sdp": ""}, "sdp"),
        ({"type": "answer", "sdp": {"sdp": "v=0", "type": "answer"}}, "sdp"),
        ({"type": "screen_share", "active": "yes"}, "active"),
        ({"type": "screen_share", "active": None}, "active"),
    ],
)
def test_field_values_are_validated(fields: dict[str, Any], field: str) -> None:
    error = rejected(frame(**fields))
    assert (error.code, error.ref) == ("invalid_message", fields["type"])
    assert error.message.startswith(f"{field}:")


@pytest.mark.parametrize(
    ("candidate", "field"),
    [
        (CANDIDATE, "candidate"),  # a bare string, not an RTCIceCandidateInit object
        ([CANDIDATE, "0", 0], "candidate"),
        (0, "candidate"),
        ({}, "candidate.candidate"),
        ({"sdpMid": "0", "sdpMLineIndex": 0}, "candidate.candidate"),
        ({"candidate": 5, "sdpMid": "0"}, "candidate.candidate"),
        ({"candidate": None, "sdpMid": "0"}, "candidate.candidate"),
        ({"candidate": "c" * 1025, "sdpMid": "0"}, "candidate.candidate"),
        ({"candidate": CANDIDATE, "sdpMid": "m" * 33}, "candidate.sdpMid"),
        ({"candidate": CANDIDATE, "sdpMid": 0}, "candidate.sdpMid"),
        ({"candidate": CANDIDATE, "sdpMLineIndex": -1}, "candidate.sdpMLineIndex"),
        ({"candidate": CANDIDATE, "sdpMLineIndex": 1025}, "candidate.sdpMLineIndex"),
        ({"candidate": CANDIDATE, "sdpMLineIndex": "0"}, "candidate.sdpMLineIndex"),
        ({"candidate": CANDIDATE, "sdpMLineIndex": 0.5}, "candidate.sdpMLineIndex"),
    ],
)
def test_bad_candidate_shapes(candidate: object, field: str) -> None:
    error = rejected(frame(type="ice", candidate=candidate))
    assert (error.code, error.ref, error.fatal) == ("invalid_message", "ice", False)
    assert error.message.startswith(f"{field}:")


def test_protocol_error_defaults() -> None:
    error = ProtocolError("out_of_order", "Send join first.")
    assert (error.code, error.message, error.ref, error.fatal) == (
        "out_of_order",
        "Send join first.",
        None,
        False,
    )
    assert str(error) == "Send join first."


# -- server messages -------------------------------------------------------------------------


def test_server_message_shape() -> None:
    assert server_message("pong") == {"v": 1, "type": "pong"}
    left = server_message("participant_left", participant_id="p_1", reason="timeout")
    assert left == {
        "v": 1,
        "type": "participant_left",
        "participant_id": "p_1",
        "reason": "timeout",
    }
    assert json.loads(json.dumps(left)) == left


def test_error_message_shape() -> None:
    assert error_message("bad_json", "Messages must be JSON objects.") == {
        "v": 1,
        "type": "error",
        "code": "bad_json",
        "message": "Messages must be JSON objects.",
        "ref": None,
    }
    assert error_message("out_of_order", "Send join first.", "chat")["ref"] == "chat"


def test_errors_round_trip_into_error_messages() -> None:
    error = rejected(frame(type="chat"))
    message = error_message(error.code, error.message, error.ref)
    assert set(message) == {"v", "type", "code", "message", "ref"}
    assert (message["type"], message["code"], message["ref"]) == (
        "error",
        "invalid_message",
        "chat",
    )


def _doc_section(heading: str) -> str:
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text("utf-8")
    start = doc.index(f"\n### {heading}")
    return doc[start : doc.index("\n### ", start + 1)]


def _first_column(section: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


def test_the_document_lists_exactly_the_client_messages() -> None:
    assert _first_column(_doc_section("2.2 Client to server")) == set(CLIENT_TYPES)


def test_the_document_lists_every_error_code_the_socket_sends() -> None:
    """Every code a ProtocolError is raised with in the server (and the audit log's refusal,
    which reaches the socket as an ApiError) is in docs/protocol.md 2.7."""
    server = Path(__file__).parents[2] / "server"
    raised = {
        code
        for source in server.rglob("*.py")
        for code in re.findall(r'ProtocolError\(\s*"([a-z_]+)"', source.read_text("utf-8"))
    }
    assert {"out_of_order", "bad_json", "internal"} <= raised  # the scan finds them
    documented = _first_column(_doc_section("2.7 Error codes"))
    assert raised | {AuditUnavailable().code, "wrong_worker"} <= documented
