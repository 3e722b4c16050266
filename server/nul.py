"""The NUL character (U+0000) in client input: PostgreSQL refuses it in text and JSON columns,
where SQLite stores it. Refused where the input comes in, it gets the same clear answer on either
database instead of a server error on one of them."""

from __future__ import annotations

NUL = "\x00"
REFUSAL = "text may not contain the NUL character (U+0000)"


def nul_at(value: object) -> tuple[str | int, ...] | None:
    """Where in decoded JSON a string or an object key holds NUL (a location as pydantic gives
    one), or None. Iterative: a body may nest as deeply as the JSON parser allows."""
    pending: list[tuple[tuple[str | int, ...], object]] = [((), value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                if NUL in key:
                    return (*where, key)
                pending.append(((*where, key), child))
        elif isinstance(item, list):
            pending.extend(((*where, index), child) for index, child in enumerate(item))
    return None
