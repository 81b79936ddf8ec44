"""A small SSF receiver written from the specs, used by the SSF end-to-end tests.

It talks HTTP to the real server on loopback (``aiohttp`` via :class:`Client`), discovers the
transmitter from its well-known metadata, maps the issuer's URLs onto the loopback server (as a
receiver behind DNS would reach them), verifies every SET with joserfc against the served JWKS
(pinned algorithm, ``typ``, ``kid``, ``iss``, ``aud``, no ``sub``/``exp``, one event) and
validates every event object of our profile against its published JSON Schema.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet
from jsonschema import (  # type: ignore[import-untyped]
    Draft202012Validator,
    FormatChecker,
)

from mission_ledger.ssf import LIFECYCLE_CHANGE, NAMESPACE
from tests.e2e.conftest import Server
from tests.e2e.test_http_api import Client, Reply

SCHEMAS = Path(__file__).resolve().parents[2] / "ssf" / "schemas"
POLL = "urn:ietf:rfc:8936"
PUSH = "urn:ietf:rfc:8935"
CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
SESSION_REVOKED = CAEP + "session-revoked"
TOKEN_CLAIMS_CHANGE = CAEP + "token-claims-change"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
# The ledger's event names (GET /missions/{id}/events "type") → our profile's event types.
PROFILE_TYPE = {
    "MissionApproved": NAMESPACE + "mission-approved",
    "MissionSuspended": NAMESPACE + "mission-suspended",
    "MissionResumed": NAMESPACE + "mission-resumed",
    "MissionAuthorityNarrowed": NAMESPACE + "mission-scope-changed",
    "MissionStageAdvanced": NAMESPACE + "mission-stage-advanced",
    "MissionDelegated": NAMESPACE + "mission-delegated",
    "MissionRevoked": NAMESPACE + "mission-revoked",
    "MissionExpired": NAMESPACE + "mission-expired",
    "MissionCompleted": NAMESPACE + "mission-completed",
    "MissionCascaded": NAMESPACE + "mission-cascaded",
    "MissionSuperseded": NAMESPACE + "mission-superseded",
}
WAIT = 60.0  # seconds: a generous bound for the outbox on a loaded machine


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=FormatChecker())


def schema_errors(event_type: str, event: dict[str, Any]) -> list[str]:
    """The event object's violations of its published schema (ours and lifecycle-change)."""
    if event_type == LIFECYCLE_CHANGE:
        name = "lifecycle-change"
    else:
        assert event_type.startswith(NAMESPACE), event_type
        name = event_type.removeprefix(NAMESPACE)
    return [e.message for e in _validator(name).iter_errors(event)]


@dataclass(frozen=True)
class ReceivedSet:
    """One verified SET."""

    jti: str
    stream_id: str
    header: dict[str, Any]
    claims: dict[str, Any]

    @property
    def event_type(self) -> str:
        ((uri, _),) = self.claims["events"].items()
        return str(uri)

    @property
    def event(self) -> dict[str, Any]:
        ((_, body),) = self.claims["events"].items()
        return dict(body)

    @property
    def subject_id(self) -> str | None:
        """The Mission (or stream) the SET is about: opaque id, or a complex session's."""
        sub_id = self.claims["sub_id"]
        if sub_id.get("format") == "complex":
            return str(sub_id["session"]["id"])
        return str(sub_id.get("id"))


class Receiver:
    """An SSF receiver (one receiver token) against the loopback server."""

    def __init__(self, client: Client, token: str, issuer: str) -> None:
        self.client = client
        self.token = token
        self.issuer = issuer
        self.metadata: dict[str, Any] = {}
        self.jwks: dict[str, Any] = {}
        self.streams: dict[str, dict[str, Any]] = {}

    # -- HTTP ---------------------------------------------------------------------------------

    def path(self, url: str) -> str:
        """An issuer URL → the path on the loopback server (a proxy strips the issuer path)."""
        base = self.issuer.rstrip("/")
        assert url.startswith(base + "/"), (url, base)
        return url[len(base) :]

    async def call(self, method: str, url: str, body: Any = None, **kw: Any) -> Reply:
        path = self.path(url) if url.startswith("http") else url
        if body is not None:
            kw["body"] = body
        return await self.client.call(method, path, as_=self.token, **kw)

    async def discover(self) -> dict[str, Any]:
        """SSF §7.2: the metadata at the inserted well-known path, then the JWKS it names."""
        parts = urlsplit(self.issuer)
        well_known = "/.well-known/ssf-configuration" + parts.path.rstrip("/")
        reply = await self.client.get(well_known)
        self.metadata = reply.ok()
        assert reply.headers["Content-Type"].startswith("application/json")
        assert self.metadata["issuer"] == self.issuer  # byte-identical (SSF §7.2.4)
        jwks = await self.client.get(self.path(self.metadata["jwks_uri"]))
        self.jwks = jwks.ok()
        return self.metadata

    def endpoint(self, name: str) -> str:
        return str(self.metadata[name])

    async def create(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.call("POST", self.endpoint("configuration_endpoint"), body or {})
        config: dict[str, Any] = reply.ok(201)
        assert config["iss"] == self.issuer
        self.streams[config["stream_id"]] = config
        return config

    async def status(self, stream_id: str, status: str, reason: str | None = None) -> None:
        body: dict[str, Any] = {"stream_id": stream_id, "status": status}
        if reason is not None:
            body["reason"] = reason
        reply = await self.call("POST", self.endpoint("status_endpoint"), body)
        assert reply.ok()["status"] == status

    async def poll(self, stream_id: str, /, **body: Any) -> Reply:
        """POST to the stream's poll endpoint (delivery.endpoint_url) with this body."""
        url = self.streams[stream_id]["delivery"]["endpoint_url"]
        return await self.call("POST", url, body)

    # -- SETs ---------------------------------------------------------------------------------

    def verify(self, stream_id: str, jti: str, token: str) -> ReceivedSet:
        """Verify one SET as an SSF receiver must (signature first, then the profile)."""
        config = self.streams[stream_id]
        alg = config.get("set_signing_alg", "RS256")
        decoded = jwt.decode(token, KeySet.import_key_set(self.jwks), algorithms=[alg])
        header, claims = dict(decoded.header), dict(decoded.claims)
        assert header["typ"] == "secevent+jwt", header
        assert header["alg"] == alg, header
        assert header["kid"] in {k["kid"] for k in self.jwks["keys"]}, header
        assert claims["jti"] == jti
        assert claims["iss"] == self.issuer == self.metadata["issuer"]
        assert claims["aud"] == config["aud"]
        assert isinstance(claims["iat"], int)
        assert claims["iat"] <= time.time() + 5
        assert isinstance(claims["txn"], str)
        assert claims["txn"]
        assert "sub" not in claims
        assert "exp" not in claims
        assert isinstance(claims["sub_id"], dict)
        assert len(claims["events"]) == 1
        received = ReceivedSet(jti, stream_id, header, claims)
        assert "subject" not in received.event
        if received.event_type.startswith(NAMESPACE) or received.event_type == LIFECYCLE_CHANGE:
            assert schema_errors(received.event_type, received.event) == []
        return received

    async def collect(
        self,
        stream_id: str,
        done: Callable[[list[ReceivedSet]], bool],
        *,
        max_events: int | None = None,
        timeout: float = WAIT,
    ) -> list[ReceivedSet]:
        """Poll (returnImmediately, acknowledging each response in the next request) until
        ``done(received)``; everything received is acknowledged before returning."""
        received: list[ReceivedSet] = []
        ack: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = {"returnImmediately": True, "ack": ack}
            if max_events is not None:
                body["maxEvents"] = max_events
            answer = (await self.poll(stream_id, **body)).ok()
            assert set(answer) <= {"sets", "moreAvailable"}, answer
            ack = list(answer["sets"])
            received += [self.verify(stream_id, j, t) for j, t in answer["sets"].items()]
            if done(received):
                break
            assert time.monotonic() < deadline, [(s.event_type, s.event) for s in received]
            if not answer["sets"]:
                await asyncio.sleep(0.05)
        if ack:
            final = await self.poll(stream_id, ack=ack, maxEvents=0, returnImmediately=True)
            assert final.ok()["sets"] == {}
        return received

    async def expect_nothing(self, stream_id: str) -> None:
        """Once the outbox has caught up (see :func:`outbox_caught_up`): nothing is offered."""
        answer = (await self.poll(stream_id, returnImmediately=True)).ok()
        assert answer == {"sets": {}, "moreAvailable": False}, answer


async def outbox_caught_up(client: Client, timeout: float = WAIT) -> None:
    """Wait until the outbox has turned every ledger event committed so far into SETs
    (``/healthz``: ``outbox_lag`` 0 at a ledger position at least the client's last write)."""
    deadline = time.monotonic() + timeout
    while True:
        health = (await client.get("/healthz")).body
        if (
            health.get("outbox_lag") == 0
            and health["ledger_position"] >= client.position
            and health["status"] == "ok"
        ):
            return
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.05)


async def history(client: Client, mission_id: str) -> list[dict[str, Any]]:
    """The Mission's ledger events (version, event_id, type), oldest first."""
    events: list[dict[str, Any]] = (
        await client.get(f"/missions/{mission_id}/events", as_="operator")
    ).ok()["events"]
    return events


def versions(
    received: Iterable[ReceivedSet], mission_id: str, event_type: str | None = None
) -> list[int]:
    """The Mission versions received for ``mission_id`` (of one type, or of our profile)."""
    out = []
    for item in received:
        if item.subject_id != mission_id:
            continue
        if event_type is None and not item.event_type.startswith(NAMESPACE):
            continue
        if event_type is not None and item.event_type != event_type:
            continue
        out.append(int(item.event["version"]))
    return out


def by_type(received: Sequence[ReceivedSet], event_type: str) -> list[ReceivedSet]:
    return [item for item in received if item.event_type == event_type]


def server_data(server: Server) -> Path:
    """The data directory of a SQLite-backed test server."""
    index = server.storage.index("--data")
    return Path(server.storage[index + 1])
