"""A refused field (`400 invalid_request`, docs/protocol.md) says which field and what is wrong
with it, as `field` (its path in the JSON body) and `rule` (a closed set), beside the English
message, which stays pydantic's: the pages say it in their reader's language from those two."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from server.api import bodies
from server.api.middleware import json_errors
from server.errors import Rule, invalid

SERVER = Path(__file__).parents[2] / "server"

PURCHASE = {
    "kind": "purchase",
    "product_type": "wealth",
    "product_code": "WM-2026-088",
    "product_name": "稳健理财88号",
    "amount": {"minor": 100, "currency": "CNY"},
    "account": "6222020200112233445",
}
SERVICE = {
    "kind": "service",
    "service": "limit_change",
    "account": "6222020200112233445",
    "details": {"daily_limit": "20000.00 CNY"},
}
SEARCH = {"date_from": "2026-01-01", "date_to": "2026-02-01"}


def purchase(**change: Any) -> dict[str, Any]:
    return {"transaction": PURCHASE | change}


def service(**change: Any) -> dict[str, Any]:
    return {"transaction": SERVICE | change}


# (the route's body model, a bad body, its field, its rule, how the message names the field)
CASES: list[tuple[type[BaseModel], Any, str, Rule, str]] = [
    # The teller's transaction form (POST /api/v1/sessions/{id}/transactions): the message
    # names the union's member (`purchase`), the field is where the body has it.
    (
        bodies.TransactionBody,
        purchase(amount={"minor": 0, "currency": "CNY"}),
        "transaction.amount.minor",
        Rule.RANGE,
        "transaction.purchase.amount.minor",
    ),
    (
        bodies.TransactionBody,
        purchase(amount={"minor": "100", "currency": "CNY"}),
        "transaction.amount.minor",
        Rule.TYPE,
        "transaction.purchase.amount.minor",
    ),
    (
        bodies.TransactionBody,
        purchase(amount={"minor": 100.5, "currency": "CNY"}),
        "transaction.amount.minor",
        Rule.TYPE,
        "transaction.purchase.amount.minor",
    ),
    (
        bodies.TransactionBody,
        purchase(amount={"minor": 100}),
        "transaction.amount.currency",
        Rule.REQUIRED,
        "transaction.purchase.amount.currency",
    ),
    (
        bodies.TransactionBody,
        purchase(account="12"),
        "transaction.account",
        Rule.FORMAT,
        "transaction.purchase.account",
    ),
    (
        bodies.TransactionBody,
        purchase(product_code=""),
        "transaction.product_code",
        Rule.FORMAT,
        "transaction.purchase.product_code",
    ),
    (
        bodies.TransactionBody,
        purchase(extra=1),
        "transaction.extra",
        Rule.UNKNOWN_FIELD,
        "transaction.purchase.extra",
    ),
    (bodies.TransactionBody, purchase(kind="loan"), "transaction.kind", Rule.CHOICE, "transaction"),
    (bodies.TransactionBody, {"transaction": {}}, "transaction.kind", Rule.REQUIRED, "transaction"),
    (bodies.TransactionBody, {"transaction": "x"}, "transaction", Rule.TYPE, "transaction"),
    # A service's tag is also the name of one of its fields.
    (
        bodies.TransactionBody,
        service(service="loan"),
        "transaction.service",
        Rule.CHOICE,
        "transaction.service.service",
    ),
    (
        bodies.TransactionBody,
        service(details={"Daily limit": "x"}),
        "transaction.details",
        Rule.FORMAT,
        "transaction.service.details.Daily limit.[key]",
    ),
    (
        bodies.TransactionBody,
        service(details={"daily_limit": "  "}),
        "transaction.details.daily_limit",
        Rule.REQUIRED,
        "transaction.service.details.daily_limit",
    ),
    # The staff console's login and invitation forms.
    (bodies.LoginBody, {"username": "  ", "password": "x"}, "username", Rule.REQUIRED, "username"),
    (bodies.LoginBody, {"username": "wang"}, "password", Rule.REQUIRED, "password"),
    (bodies.LoginBody, [], "body", Rule.TYPE, "body"),
    (
        bodies.InvitationBody,
        {"business": "wealth", "ttl_minutes": 2000},
        "ttl_minutes",
        Rule.RANGE,
        "ttl_minutes",
    ),
    (
        bodies.InvitationBody,
        {"business": "wealth", "customer_name": "李" * 65},
        "customer_name",
        Rule.TOO_LONG,
        "customer_name",
    ),
    (bodies.InvitationBody, {"business": "loans"}, "business", Rule.CHOICE, "business"),
    # Accounts (`vteller admin` and the API), the console's routing and the auditor portal.
    (
        bodies.NewUserBody,
        {"username": "x y", "password": "a-long-enough-password", "role": "teller"},
        "username",
        Rule.FORMAT,
        "username",
    ),
    (
        bodies.NewUserBody,
        {"username": "xy", "password": "short", "role": "teller"},
        "password",
        Rule.TOO_SHORT,
        "password",
    ),
    (
        bodies.NewUserBody,
        {"username": "xy", "password": "a-long-enough-password", "role": "root"},
        "role",
        Rule.CHOICE,
        "role",
    ),
    (bodies.TellerSkillsBody, {"skills": ["wealth", "loans"]}, "skills.1", Rule.CHOICE, "skills.1"),
    (bodies.TellerSkillsBody, {"skills": ["wealth"] * 4}, "skills", Rule.TOO_LONG, "skills"),
    (
        bodies.ArchiveSearchBody,
        SEARCH | {"date_to": "2026-13-01"},
        "date_to",
        Rule.FORMAT,
        "date_to",
    ),
    (bodies.ArchiveSearchBody, SEARCH | {"page": 0}, "page", Rule.RANGE, "page"),
    # A rule between two fields is the body's.
    (bodies.ArchiveSearchBody, SEARCH | {"date_from": "2026-03-01"}, "body", Rule.INVALID, "body"),
    (bodies.LegalHoldBody, {"held": "true", "reason": "court"}, "held", Rule.TYPE, "held"),
    (bodies.LegalHoldBody, {"held": True, "reason": "no"}, "reason", Rule.TOO_SHORT, "reason"),
    # NUL, refused after pydantic accepted the body.
    (bodies.CallbackBody, {"phone": "138\x00"}, "phone", Rule.FORMAT, "phone"),
    (
        bodies.TransactionBody,
        service(details={"note": "a\x00"}),
        "transaction.details.note",
        Rule.FORMAT,
        "transaction.details.note",
    ),
]


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The real body models and error middleware behind one route per model."""
    models = {case[0].__name__: case[0] for case in CASES}

    async def handler(request: web.Request) -> web.Response:
        await bodies.parse(request, models[request.match_info["model"]])
        return web.json_response({})

    app = web.Application(middlewares=[json_errors])
    app.router.add_post("/{model}", handler)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("model", "body", "field", "rule", "named"),
    CASES,
    ids=[f"{case[0].__name__}-{case[2]}-{case[3].value}" for case in CASES],
)
async def test_a_refused_field_is_named_with_its_rule(
    client: TestClient[web.Request, web.Application],
    model: type[BaseModel],
    body: Any,
    field: str,
    rule: Rule,
    named: str,
) -> None:
    response = await client.post(f"/{model.__name__}", json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["code"], error["field"], error["rule"]) == ("invalid_request", field, rule.value)
    # The message is as it was: the English text for operators and API clients.
    assert error["message"].startswith(f"{named}: ") and len(error["message"]) > len(named) + 2


def test_a_refusal_outside_pydantic_has_the_same_shape() -> None:
    error = invalid("limit", Rule.RANGE, "a whole number from 1 to 500")
    assert (error.status, error.code) == (400, "invalid_request")
    assert error.message == "limit: a whole number from 1 to 500"
    assert error.details == {"field": "limit", "rule": "range"}


def test_every_invalid_request_is_made_by_invalid() -> None:
    """Written anywhere else, a refusal could lack its field and rule."""
    makers = {
        path.relative_to(SERVER).as_posix()
        for path in SERVER.rglob("*.py")
        if re.search(r"""["']invalid_request["']""", path.read_text("utf-8"))
    }
    assert makers == {"errors.py"}
