"""One table describes each route: the router registers it and the OpenAPI document shows it.

Also the small pieces every command handler shares: the ``If-Match`` and ``Idempotency-Key``
headers and the shape of a command's response (the document, ``changed``, ``replayed``,
``ledger_position``, ``ETag``, ``Location``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ..domain.errors import InvalidInput
from ..ledger import CommandResult

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class Route:
    """A route and what the OpenAPI document says about it."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    responses: dict[int, str]  # status → component schema name ("" for no body)
    body: type[BaseModel] | None = None
    body_required: bool = False
    query: type[BaseModel] | None = None
    headers: tuple[str, ...] = ()  # request headers it honours: If-Match, Idempotency-Key
    public: bool = False
    roles: tuple[str, ...] = ()
    description: str = ""
    errors: tuple[int, ...] = field(default=(400, 401, 403, 404, 409, 413, 415, 503))


def expected_version(request: web.Request) -> int | None:
    """``If-Match: "<version>"`` → the expected version (``*`` or absent → None)."""
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    match = _ETAG.match(value)
    if match is None:
        raise InvalidInput(
            'If-Match must be the version as an entity tag, e.g. If-Match: "3" '
            "(the ETag of the last response)",
            field="If-Match",
        )
    return int(match.group(1))


def idempotency_key(request: web.Request) -> str | None:
    """``Idempotency-Key``: 1–255 visible ASCII characters; a retry replays the first result."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not _KEY.match(value):
        raise InvalidInput(
            "Idempotency-Key must be 1–255 visible ASCII characters (e.g. a UUID)",
            field="Idempotency-Key",
        )
    return value


def json_response(
    document: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(document, ensure_ascii=False),
        content_type="application/json",
        headers=headers,
    )


def command_response(
    result: CommandResult, *, status: int = 200, location: str | None = None
) -> web.Response:
    """A command's result: its document plus ``changed``/``replayed``/``ledger_position``."""
    document = dict(result.document)
    document["changed"] = result.changed
    document["replayed"] = result.replayed
    document["ledger_position"] = result.position
    headers: dict[str, str] = {}
    version = result.document.get("version")
    if isinstance(version, int):
        headers["ETag"] = f'"{version}"'
    if location is not None:
        headers["Location"] = location
    return json_response(document, status=status, headers=headers)
