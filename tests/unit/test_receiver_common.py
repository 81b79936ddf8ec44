"""Shared plumbing for the receiver SDK tests (real aiohttp servers on 127.0.0.1, SETs signed
with our own key store), and the tests of that plumbing itself.

Nothing is mocked: every HTTP exchange crosses a loopback socket to an aiohttp server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from mission_ledger.receiver import VerifiedSet
from mission_ledger.ssf.keys import MemoryKeyStore, SigningKey
from mission_ledger.ssf.mission_events import NAMESPACE
from mission_ledger.ssf.rfc8417_set import build_set_claims, sign_set

T = TypeVar("T")

AUD = "https://erp.example.com"
TOKEN = "mlt_receiver_token_for_tests"
MISSION = "3f2b8c1e-5d4a-4c7b-9e2f-1a6d8b9c0e11"
REVOKED = NAMESPACE + "mission-revoked"
APPROVED = NAMESPACE + "mission-approved"
SUSPENDED = NAMESPACE + "mission-suspended"
RESUMED = NAMESPACE + "mission-resumed"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"

_STORES: dict[str, MemoryKeyStore] = {}


def key_store(name: str = "transmitter") -> MemoryKeyStore:
    """A memory key store with an RS256 and an ES256 key, one per name for the whole run."""
    if name not in _STORES:
        store = MemoryKeyStore(rsa_bits=2048)
        store.ensure_keys()
        _STORES[name] = store
    return _STORES[name]


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 (a free port); yields its base URL (no trailing ``/``)."""
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


# -- SETs ----------------------------------------------------------------------------------------


def mission_event(
    version: int,
    state: str,
    *,
    mission_id: str = MISSION,
    **members: Any,
) -> dict[str, Any]:
    return {
        "mission_id": mission_id,
        "state": state,
        "version": version,
        "event_timestamp": 1772442000 + version,
        "initiating_entity": "admin",
        "authority_hash": members.pop("authority_hash", "sha-256:aaaa"),
        "expires_at": "2026-04-01T09:00:00Z",
        **members,
    }


def claims(
    *,
    iss: str,
    aud: str = AUD,
    event_type: str = REVOKED,
    event: Mapping[str, Any] | None = None,
    sub_id: Mapping[str, Any] | None = None,
    txn: str = "txn-1",
    jti: str | None = None,
) -> dict[str, Any]:
    return build_set_claims(
        iss=iss,
        aud=aud,
        event_type=event_type,
        event=event if event is not None else mission_event(2, "revoked"),
        sub_id=sub_id if sub_id is not None else {"format": "opaque", "id": MISSION},
        txn=txn,
        jti=jti,
    )


def make_set(key: SigningKey, **kw: Any) -> str:
    return sign_set(claims(**kw), key)


def verified(
    event_type: str,
    event: dict[str, Any],
    *,
    jti: str,
    iss: str = "https://ledger.example.com",
    sub_id: dict[str, Any] | None = None,
    txn: str | None = None,
) -> VerifiedSet:
    """A VerifiedSet without signing (for the tracker, which only sees verified SETs)."""
    body: dict[str, Any] = {
        "iss": iss,
        "aud": AUD,
        "iat": 1772442000,
        "jti": jti,
        "sub_id": sub_id
        if sub_id is not None
        else {"format": "opaque", "id": event.get("mission_id", MISSION)},
        "events": {event_type: event},
    }
    if txn is not None:
        body["txn"] = txn
    return VerifiedSet.from_claims("unsigned", body)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def sign_input(signing_input: str, key: SigningKey) -> str:
    """``signing_input`` "." its JWS signature by ``key`` with the key's own algorithm, whatever
    the header says (ES256 as the 64-byte R || S): independent of the signer under test."""
    data = signing_input.encode("ascii")
    if isinstance(key.private_key, rsa.RSAPrivateKey):
        signature = key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{b64(signature)}"


def signed_with_header(key: SigningKey, body: Mapping[str, Any], **header: Any) -> str:
    """``body`` signed by ``key`` with extra header members (e.g. another ``typ``)."""
    return jwt.encode(
        dict(body), key.private_key, algorithm=key.alg, headers={"kid": key.kid, **header}
    )


def alg_none(key: SigningKey, body: Mapping[str, Any]) -> str:
    header = {"alg": "none", "kid": key.kid, "typ": "secevent+jwt"}
    return f"{b64json(header)}.{b64json(body)}."


def hs256_with_public_key(key: SigningKey, body: Mapping[str, Any]) -> str:
    """The classic confusion attack: HMAC keyed with the transmitter's public key (PEM)."""
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'kid': key.kid, 'typ': 'secevent+jwt'})}"
    signing_input += f".{b64json(body)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def bad_signature(token: str) -> str:
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


# -- a small transmitter -------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Transmitter:
    """A small, real SSF transmitter on loopback: metadata, JWKS, canned management answers
    and an RFC 8936 poll endpoint backed by a queue.

    ``answers[(method, path)]`` = ``(status, json_body, headers)``; ``poll_failures`` are
    ``(status, headers)`` answered to the next polls before the queue is served.
    """

    store: MemoryKeyStore
    url: str = ""
    issuer: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    jwks_fetches: int = 0
    jwks_status: int = 200
    answers: dict[tuple[str, str], tuple[int, Any, dict[str, str]]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    queue: dict[str, str] = field(default_factory=dict)
    acked: list[str] = field(default_factory=list)
    set_errs: dict[str, dict[str, str]] = field(default_factory=dict)
    poll_failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    hold: float = 0.2  # long-poll hold when the queue is empty, seconds
    polls: list[Recorded] = field(default_factory=list)
    poll_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def enqueue(self, *tokens: str) -> None:
        for token in tokens:
            self.queue[jwt.decode(token, options={"verify_signature": False})["jti"]] = token
        self.drained.clear()
        self._changed.set()

    async def _record(self, request: web.Request) -> Recorded:
        text = await request.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        recorded = Recorded(
            request.method, request.path, dict(request.query), dict(request.headers), body
        )
        self.requests.append(recorded)
        return recorded

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.jwks_fetches += 1
        if self.jwks_status != 200:
            return web.Response(status=self.jwks_status)
        return web.json_response(self.store.jwks())

    async def _metadata(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.metadata)

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        self.polls.append(recorded)
        self.poll_arrived.set()
        if self.poll_failures:
            status, headers = self.poll_failures.pop(0)
            return web.json_response({"error": "try later"}, status=status, headers=headers)
        body = recorded.body if isinstance(recorded.body, dict) else {}
        for jti in body.get("ack", []):  # acks of SETs no longer held are ignored (re-sent)
            if self.queue.pop(jti, None) is not None:
                self.acked.append(jti)
        for jti, err in body.get("setErrs", {}).items():
            if self.queue.pop(jti, None) is not None:
                self.set_errs[jti] = err
        if not self.queue:
            self.drained.set()
        max_events = body.get("maxEvents")
        if max_events == 0:
            return web.json_response({"sets": {}})
        if not self.queue and not body.get("returnImmediately", False):
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.hold)
        items = list(self.queue.items())
        chosen = items if max_events is None else items[:max_events]
        return web.json_response({"sets": dict(chosen), "moreAvailable": len(chosen) < len(items)})

    async def _canned(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        status, body, headers = self.answers.get(
            (request.method, request.path), (404, {"error": "no such route"}, {})
        )
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/ssf-configuration", self._metadata)
        app.router.add_get("/jwks.json", self._jwks)
        app.router.add_post("/ssf/poll/{stream_id}", self._poll)
        app.router.add_route("*", "/{tail:.*}", self._canned)
        return app

    def describe(self, url: str) -> None:
        self.url = self.issuer = url
        self.metadata = {
            "spec_version": "1_0",
            "issuer": url,
            "jwks_uri": url + "/jwks.json",
            "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"],
            "configuration_endpoint": url + "/ssf/stream",
            "status_endpoint": url + "/ssf/status",
            "add_subject_endpoint": url + "/ssf/subjects:add",
            "remove_subject_endpoint": url + "/ssf/subjects:remove",
            "verification_endpoint": url + "/ssf/verify",
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "default_subjects": "ALL",
        }

    def stream_config(self, stream_id: str = "s1", **changes: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "stream_id": stream_id,
            "iss": self.issuer,
            "aud": AUD,
            "delivery": {
                "method": "urn:ietf:rfc:8936",
                "endpoint_url": f"{self.url}/ssf/poll/{stream_id}",
            },
            "events_supported": [REVOKED, SUSPENDED],
            "events_requested": [REVOKED],
            "events_delivered": [REVOKED],
            "min_verification_interval": 30,
        }
        config.update(changes)
        return config


@asynccontextmanager
async def transmitter(store: MemoryKeyStore | None = None) -> AsyncIterator[Transmitter]:
    t = Transmitter(store if store is not None else key_store())
    async with serve(t.app()) as url:
        t.describe(url)
        yield t


# -- tests of the plumbing itself ---------------------------------------------------------------


def test_the_small_transmitter_serves_its_keys_and_metadata() -> None:
    async def main() -> None:
        import aiohttp

        async with transmitter() as t, aiohttp.ClientSession() as session:
            async with session.get(t.url + "/jwks.json") as response:
                keys = (await response.json())["keys"]
            assert sorted(k["alg"] for k in keys) == ["ES256", "RS256"]
            assert t.jwks_fetches == 1
            async with session.get(t.url + "/.well-known/ssf-configuration") as response:
                assert (await response.json())["issuer"] == t.issuer

    run(main)


def test_tampering_helpers_change_what_they_claim_to() -> None:
    key = key_store().active("RS256")
    token = make_set(key, iss="https://t.example")
    assert bad_signature(token).split(".")[:2] == token.split(".")[:2]
    assert bad_signature(token) != token
    header = jwt.get_unverified_header(alg_none(key, claims(iss="https://t.example")))
    assert header["alg"] == "none"
    header = jwt.get_unverified_header(hs256_with_public_key(key, claims(iss="https://t")))
    assert header["alg"] == "HS256"


def test_the_sdk_guide_python_blocks_compile() -> None:
    import ast
    import re
    from pathlib import Path

    guide = Path(__file__).resolve().parents[2] / "docs" / "receiver-sdk.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        compile(block, str(guide), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
