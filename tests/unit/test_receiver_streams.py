"""StreamClient against a real loopback transmitter with canned answers: what it sends (method,
path, body, bearer header only), what it checks (``iss`` on every configuration) and how HTTP
errors map to typed exceptions."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from mission_ledger.receiver import (
    POLL,
    PUSH,
    DiscoveryError,
    InsecureUrl,
    InvalidResponse,
    IssuerMismatch,
    StreamClient,
    StreamNotFound,
    TransmitterBadRequest,
    TransmitterConflict,
    TransmitterError,
    TransmitterForbidden,
    TransmitterMetadata,
    TransmitterRateLimited,
    TransmitterServerError,
    TransmitterUnauthorized,
    discover,
)
from tests.unit.test_receiver_common import (
    REVOKED,
    SUSPENDED,
    TOKEN,
    Recorded,
    Transmitter,
    run,
    transmitter,
)


async def client_for(t: Transmitter, session: aiohttp.ClientSession) -> StreamClient:
    return StreamClient(await discover(t.issuer, session), TOKEN, session)


def only_bearer(request: Recorded) -> None:
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in request.path
    assert all(TOKEN not in value for value in request.query.values())


def test_create_defaults_to_poll_and_returns_the_configuration() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.answers[("POST", "/ssf/stream")] = (201, t.stream_config(), {})
            client = await client_for(t, session)
            config = await client.create([REVOKED, SUSPENDED], description="ERP")
            sent = t.requests[-1]
            only_bearer(sent)
            assert sent.headers["Content-Type"] == "application/json"
            assert sent.body == {
                "delivery": {"method": POLL},
                "events_requested": [REVOKED, SUSPENDED],
                "description": "ERP",
            }
            assert config.stream_id == "s1"
            assert config.poll_url == t.url + "/ssf/poll/s1"
            assert config.events_delivered == (REVOKED,)
            assert config.audiences == ("https://erp.example.com",)
            assert "Bearer" not in repr(client)

    run(main)


def test_create_push_sends_endpoint_and_authorization_header() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            push = {"method": PUSH, "endpoint_url": "https://erp.example.com/ssf/events"}
            t.answers[("POST", "/ssf/stream")] = (201, t.stream_config(delivery=push), {})
            client = await client_for(t, session)
            config = await client.create(
                [REVOKED],
                endpoint_url="https://erp.example.com/ssf/events",
                authorization_header="secret-42",
                set_signing_alg="ES256",
            )
            assert t.requests[-1].body == {
                "delivery": {**push, "authorization_header": "secret-42"},
                "events_requested": [REVOKED],
                "set_signing_alg": "ES256",
            }
            assert config.poll_url is None
            with pytest.raises(ValueError, match="push"):
                await client.create([REVOKED], authorization_header="x")

    run(main)


def test_create_refuses_a_delivery_method_the_transmitter_does_not_advertise() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.metadata["delivery_methods_supported"] = [POLL]
            client = await client_for(t, session)
            with pytest.raises(DiscoveryError, match="does not advertise"):
                await client.create(endpoint_url="https://erp.example.com/events")
            assert t.requests == []

    run(main)


def test_every_configuration_response_is_checked_for_iss() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            wrong = t.stream_config(iss="https://evil.example.com")
            t.answers[("POST", "/ssf/stream")] = (201, wrong, {})
            t.answers[("GET", "/ssf/stream")] = (200, wrong, {})
            t.answers[("PATCH", "/ssf/stream")] = (200, wrong, {})
            t.answers[("PUT", "/ssf/stream")] = (200, wrong, {})
            client = await client_for(t, session)
            calls = (
                client.create([REVOKED]),
                client.get("s1"),
                client.list(),
                client.update("s1", description="x"),
                client.replace("s1", events_requested=[REVOKED]),
            )
            for call in calls:
                with pytest.raises(IssuerMismatch, match="evil"):
                    await call

    run(main)


def test_read_list_update_replace_delete() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            client = await client_for(t, session)
            t.answers[("GET", "/ssf/stream")] = (200, t.stream_config(), {})
            assert (await client.get("s1")).stream_id == "s1"
            assert t.requests[-1].query == {"stream_id": "s1"}
            only_bearer(t.requests[-1])

            both = [t.stream_config("s1"), t.stream_config("s2")]
            t.answers[("GET", "/ssf/stream")] = (200, both, {})
            assert [c.stream_id for c in await client.list()] == ["s1", "s2"]
            assert t.requests[-1].query == {}
            t.answers[("GET", "/ssf/stream")] = (200, [], {})
            assert await client.list() == []
            t.answers[("GET", "/ssf/stream")] = (404, {"error": "none"}, {})
            assert await client.list() == []

            t.answers[("PATCH", "/ssf/stream")] = (200, t.stream_config(description="new"), {})
            assert (await client.update("s1", description="new")).description == "new"
            assert t.requests[-1].body == {"description": "new", "stream_id": "s1"}

            t.answers[("PUT", "/ssf/stream")] = (200, t.stream_config(), {})
            await client.replace("s1", events_requested=[REVOKED], delivery={"method": POLL})
            assert t.requests[-1].method == "PUT"
            assert t.requests[-1].body == {
                "events_requested": [REVOKED],
                "delivery": {"method": POLL},
                "stream_id": "s1",
            }

            t.answers[("DELETE", "/ssf/stream")] = (204, None, {})
            await client.delete("s1")
            assert (t.requests[-1].method, t.requests[-1].query) == ("DELETE", {"stream_id": "s1"})

    run(main)


def test_an_accepted_but_unprocessed_update_returns_a_fresh_read() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            client = await client_for(t, session)
            t.answers[("PATCH", "/ssf/stream")] = (202, None, {})
            t.answers[("GET", "/ssf/stream")] = (200, t.stream_config(description="old"), {})
            assert (await client.update("s1", description="new")).description == "old"

    run(main)


def test_status_subjects_and_verification() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            client = await client_for(t, session)
            t.answers[("GET", "/ssf/status")] = (200, {"stream_id": "s1", "status": "enabled"}, {})
            status = await client.get_status("s1")
            assert (status.status, status.reason) == ("enabled", None)
            assert t.requests[-1].query == {"stream_id": "s1"}

            paused = {"stream_id": "s1", "status": "paused", "reason": "maintenance"}
            t.answers[("POST", "/ssf/status")] = (200, paused, {})
            status = await client.set_status("s1", "paused", "maintenance")
            assert status.reason == "maintenance"
            assert t.requests[-1].body == paused

            subject: dict[str, Any] = {"format": "opaque", "id": "m-1"}
            t.answers[("POST", "/ssf/subjects:add")] = (200, None, {})
            await client.add_subject("s1", subject, verified=True)
            assert t.requests[-1].body == {"stream_id": "s1", "subject": subject, "verified": True}
            t.answers[("POST", "/ssf/subjects:remove")] = (204, None, {})
            await client.remove_subject("s1", subject)
            assert t.requests[-1].body == {"stream_id": "s1", "subject": subject}

            t.answers[("POST", "/ssf/verify")] = (204, None, {})
            state = await client.request_verification("s1")
            assert t.requests[-1].body == {"stream_id": "s1", "state": state}
            assert len(state) >= 20
            assert await client.request_verification("s1", "mine") == "mine"
            for request in t.requests:
                only_bearer(request)

    run(main)


@pytest.mark.parametrize(
    ("status", "error", "headers"),
    [
        (400, TransmitterBadRequest, {}),
        (401, TransmitterUnauthorized, {"WWW-Authenticate": 'Bearer error="invalid_token"'}),
        (403, TransmitterForbidden, {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}),
        (404, StreamNotFound, {}),
        (409, TransmitterConflict, {}),
        (429, TransmitterRateLimited, {"Retry-After": "30"}),
        (500, TransmitterServerError, {}),
        (503, TransmitterServerError, {}),
    ],
)
def test_http_errors_map_to_typed_exceptions(
    status: int, error: type[TransmitterError], headers: dict[str, str]
) -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            client = await client_for(t, session)
            problem = {"title": "nope", "detail": f"refused with {status}"}
            t.answers[("POST", "/ssf/verify")] = (status, problem, headers)
            with pytest.raises(error) as caught:
                await client.request_verification("s1")
            assert type(caught.value) is error
            assert caught.value.status == status
            assert f"refused with {status}" in caught.value.description
            assert caught.value.body == problem
            if isinstance(caught.value, TransmitterUnauthorized):
                assert caught.value.www_authenticate == 'Bearer error="invalid_token"'
            if isinstance(caught.value, TransmitterRateLimited):
                assert caught.value.retry_after == 30.0

    run(main)


def test_a_malformed_configuration_is_invalid_response() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            client = await client_for(t, session)
            config = t.stream_config()
            del config["events_delivered"]
            t.answers[("GET", "/ssf/stream")] = (200, config, {})
            with pytest.raises(InvalidResponse, match="events_delivered"):
                await client.get("s1")
            t.answers[("GET", "/ssf/stream")] = (200, "text", {})
            with pytest.raises(InvalidResponse):
                await client.list()

    run(main)


def test_a_missing_endpoint_or_an_insecure_one_is_refused_before_any_request() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            bare = TransmitterMetadata(
                issuer="https://tr.example.com", jwks_uri="https://tr.example.com/jwks"
            )
            with pytest.raises(DiscoveryError, match="no verification_endpoint"):
                await StreamClient(bare, TOKEN, session).request_verification("s1")
            insecure = TransmitterMetadata(
                issuer="https://tr.example.com",
                jwks_uri="https://tr.example.com/jwks",
                configuration_endpoint="http://tr.example.com/ssf/stream",
            )
            with pytest.raises(InsecureUrl):
                await StreamClient(insecure, TOKEN, session).get("s1")
            client = StreamClient(insecure, TOKEN, session)
            with pytest.raises(InsecureUrl):
                await client.poll("http://tr.example.com/ssf/poll/1")

    run(main)


def test_poll_url_resolution_and_the_poll_request() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            client = await client_for(t, session)
            t.answers[("GET", "/ssf/stream")] = (200, t.stream_config(), {})
            url = await client.poll_url("s1")
            assert url == t.url + "/ssf/poll/s1"
            assert await client.poll_url(url) == url
            response = await client.poll(
                url,
                max_events=5,
                return_immediately=True,
                ack=["a"],
                set_errs={"b": {"err": "invalid_key", "description": "unknown kid"}},
            )
            assert response.sets == {}
            assert response.more_available is False
            sent = t.polls[-1]
            only_bearer(sent)
            assert sent.headers["Content-Language"] == "en"
            assert sent.body == {
                "returnImmediately": True,
                "maxEvents": 5,
                "ack": ["a"],
                "setErrs": {"b": {"err": "invalid_key", "description": "unknown kid"}},
            }
            await client.poll(url, return_immediately=True)
            assert "Content-Language" not in t.polls[-1].headers
            assert t.polls[-1].body == {"returnImmediately": True}

            push = {"method": PUSH, "endpoint_url": "https://erp.example.com/e"}
            t.answers[("GET", "/ssf/stream")] = (200, t.stream_config(delivery=push), {})
            with pytest.raises(InvalidResponse, match="not poll"):
                await client.poll_url("s1")

    run(main)
