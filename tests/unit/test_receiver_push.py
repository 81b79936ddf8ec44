"""push_handler on a real loopback server, driven over HTTP like a transmitter would (RFC 8935):
202 empty, 400 JSON with the right ``err`` and ``Content-Language``, 401, 415, 503, 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from mission_ledger.receiver import (
    SET_CONTENT_TYPE,
    MissionTracker,
    SetVerifier,
    VerifiedSet,
    push_handler,
)
from tests.unit.test_receiver_common import (
    AUD,
    MISSION,
    VERIFICATION,
    Transmitter,
    bad_signature,
    claims,
    key_store,
    make_set,
    mission_event,
    run,
    serve,
    transmitter,
)
from tests.unit.test_receiver_verifier import forge

RSA = key_store().active("RS256")


@dataclass
class Endpoint:
    url: str
    transmitter: Transmitter
    session: aiohttp.ClientSession
    tracker: MissionTracker
    received: list[VerifiedSet]

    async def push(
        self,
        token: str | bytes,
        *,
        content_type: str | None = SET_CONTENT_TYPE,
        authorization: str | None = None,
    ) -> tuple[int, dict[str, str], str]:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if authorization is not None:
            headers["Authorization"] = authorization
        data = token.encode() if isinstance(token, str) else token
        async with self.session.post(self.url, data=data, headers=headers) as response:
            return response.status, dict(response.headers), await response.text()


@asynccontextmanager
async def endpoint(
    *,
    expected_authorization: str | None = None,
    on_event: Callable[[Endpoint], Any] | None = None,
) -> AsyncIterator[Endpoint]:
    async with transmitter() as t, aiohttp.ClientSession() as session:
        verifier = SetVerifier(t.issuer, AUD, t.url + "/jwks.json", session)
        tracker = MissionTracker()
        received: list[VerifiedSet] = []
        holder: dict[str, Endpoint] = {}

        async def handle(verified: VerifiedSet) -> None:
            received.append(verified)
            if on_event is not None:
                on_event(holder["e"])
            await tracker.apply(verified)

        app = web.Application()
        app.router.add_post(
            "/ssf/events",
            push_handler(verifier, handle, expected_authorization=expected_authorization),
        )
        async with serve(app) as url:
            holder["e"] = Endpoint(url + "/ssf/events", t, session, tracker, received)
            yield holder["e"]


def assert_set_error(reply: tuple[int, dict[str, str], str], err: str) -> dict[str, Any]:
    status, headers, text = reply
    assert status == 400, reply
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Content-Language"] == "en"
    body: dict[str, Any] = json.loads(text)
    assert set(body) == {"err", "description"}
    assert body["err"] == err
    assert body["description"]
    return body


def test_a_valid_set_is_accepted_with_202_and_an_empty_body() -> None:
    async def main() -> None:
        async with endpoint() as e:
            token = make_set(RSA, iss=e.transmitter.issuer, event=mission_event(1, "active"))
            status, headers, text = await e.push(token)
            assert (status, text) == (202, "")
            assert headers.get("Content-Length") == "0"
            assert [v.token for v in e.received] == [token]
            assert e.tracker.is_active(MISSION)
            # A redelivery is answered exactly like the first delivery, and not reapplied.
            assert (await e.push(token))[0] == 202
            assert len(e.received) == 2
            assert len(e.tracker.missions()) == 1

    run(main)


def test_refused_sets_get_400_with_the_rfc8935_code() -> None:
    async def main() -> None:
        foreign = key_store("foreign").active("RS256")
        async with endpoint() as e:
            iss = e.transmitter.issuer
            assert_set_error(
                await e.push(bad_signature(make_set(RSA, iss=iss))), "authentication_failed"
            )
            assert_set_error(
                await e.push(make_set(RSA, iss=iss, aud="https://x")), "invalid_audience"
            )
            assert_set_error(await e.push(make_set(RSA, iss="https://evil")), "invalid_issuer")
            assert_set_error(await e.push(make_set(foreign, iss=iss)), "invalid_key")
            body = assert_set_error(await e.push("this is not a SET"), "invalid_request")
            assert "JWS" in body["description"]
            assert_set_error(await e.push(b"\xff\xfe.a.b"), "invalid_request")
            assert_set_error(await e.push("x" * 70_000), "invalid_request")
            assert e.received == []

    run(main)


def test_a_verification_with_a_state_never_sent_is_invalid_state() -> None:
    async def main() -> None:
        async with endpoint() as e:
            iss = e.transmitter.issuer
            stream = {"format": "opaque", "id": "f" * 32}
            forged = make_set(
                RSA, iss=iss, event_type=VERIFICATION, event={"state": "forged"}, sub_id=stream
            )
            assert_set_error(await e.push(forged), "invalid_state")
            state = e.tracker.expect_verification()
            good = make_set(
                RSA, iss=iss, event_type=VERIFICATION, event={"state": state}, sub_id=stream
            )
            assert (await e.push(good))[0] == 202
            assert e.tracker.is_verified(state)

    run(main)


def test_the_authorization_header_must_match_exactly_when_configured() -> None:
    async def main() -> None:
        async with endpoint(expected_authorization="Bearer push-secret") as e:
            token = make_set(RSA, iss=e.transmitter.issuer)
            for given in (None, "Bearer push-secre", "bearer push-secret", "push-secret"):
                status, _, text = await e.push(token, authorization=given)
                assert (status, text) == (401, "")
            # Authorization is checked before anything else: even a wrong type is a 401.
            assert (await e.push(token, content_type="text/plain"))[0] == 401
            assert e.received == []
            assert (await e.push(token, authorization="Bearer push-secret"))[0] == 202

    run(main)


def test_a_wrong_content_type_is_415() -> None:
    async def main() -> None:
        async with endpoint() as e:
            token = make_set(RSA, iss=e.transmitter.issuer)
            for content_type in ("application/json", "application/jwt", "text/plain", None):
                status, headers, _ = await e.push(token, content_type=content_type)
                assert status == 415
                assert headers["Accept"] == SET_CONTENT_TYPE
            assert (await e.push(token, content_type=SET_CONTENT_TYPE + "; charset=us-ascii"))[
                0
            ] == 202

    run(main)


def test_an_unreachable_jwks_is_503_so_the_transmitter_retries() -> None:
    async def main() -> None:
        async with endpoint() as e:
            e.transmitter.jwks_status = 500
            status, headers, _ = await e.push(make_set(RSA, iss=e.transmitter.issuer))
            assert status == 503
            assert headers["Retry-After"] == "30"

    run(main)


def test_a_failing_persistence_hook_is_500_and_the_set_is_not_remembered() -> None:
    def explode(e: Endpoint) -> None:
        raise RuntimeError("disk full")

    async def main() -> None:
        async with endpoint(on_event=explode) as e:
            token = make_set(RSA, iss=e.transmitter.issuer, jti="j-500")
            status, _, text = await e.push(token)
            assert (status, text) == (500, "")
            assert not e.tracker.seen(e.transmitter.issuer, "j-500")

    run(main)


def test_only_post_is_routed() -> None:
    async def main() -> None:
        async with endpoint() as e, e.session.get(e.url) as response:
            assert response.status == 405

    run(main)


def test_the_415_body_names_the_media_type_to_send() -> None:
    async def main() -> None:
        async with endpoint() as e:
            token = make_set(RSA, iss=e.transmitter.issuer)
            status, headers, text = await e.push(token, content_type="application/jwt")
            assert status == 415
            assert headers["Content-Type"] == "application/json; charset=utf-8"
            assert json.loads(text) == {"error": f"Content-Type must be {SET_CONTENT_TYPE}"}

    run(main)


def test_malformed_sets_are_400_not_500() -> None:
    """Strict compact JWS parsing (RFC 7515 §2): every malformed SET is the SET's fault."""

    async def main() -> None:
        async with endpoint() as e:
            iss = e.transmitter.issuer
            token = make_set(RSA, iss=iss)
            head, body, signature = token.split(".")
            header = {"alg": "RS256", "kid": RSA.kid, "typ": "secevent+jwt"}
            for bad, err in (
                (token + "==", "invalid_request"),  # padded
                (f"{head}.{body}./{signature[1:]}", "invalid_request"),
                (f"{head}.{body} .{signature}", "invalid_request"),
                (f"{token}.{signature}", "invalid_request"),
                (
                    forge({**header, "crit": ["exp"], "exp": 1}, claims(iss=iss), RSA),
                    "invalid_request",
                ),
                (forge(header, [claims(iss=iss)], RSA), "invalid_request"),
                (forge({**header, "kid": 7}, claims(iss=iss), RSA), "invalid_key"),
                (forge({**header, "alg": "ES256"}, claims(iss=iss), RSA), "invalid_key"),
            ):
                assert_set_error(await e.push(bad), err)
            assert e.received == []
            assert (await e.push(f"\r\n{token}\n"))[0] == 202  # whitespace around: stripped

    run(main)


def test_a_sync_handler_and_an_awaitable_it_returns_are_both_honoured() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = SetVerifier(t.issuer, AUD, t.url + "/jwks.json", session)
            seen: list[str] = []

            def sync(verified: VerifiedSet) -> None:
                seen.append(verified.jti)

            def deferred_failure(verified: VerifiedSet) -> asyncio.Future[None]:
                future = asyncio.get_running_loop().create_future()
                asyncio.get_running_loop().call_soon(future.set_exception, RuntimeError("full"))
                return future

            app = web.Application()
            app.router.add_post("/sync", push_handler(verifier, sync))
            app.router.add_post("/deferred", push_handler(verifier, deferred_failure))
            async with serve(app) as url:
                for path, status in (("sync", 202), ("deferred", 500)):  # awaited, so it fails
                    token = make_set(RSA, iss=t.issuer, jti=f"j-{path}")
                    headers = {"Content-Type": SET_CONTENT_TYPE}
                    async with session.post(f"{url}/{path}", data=token, headers=headers) as reply:
                        assert reply.status == status
            assert seen == ["j-sync"]

    run(main)
