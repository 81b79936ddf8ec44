"""The SSF management surface end to end: discovery, stream configuration, status, subjects,
verification and every error SSF lists, against the real server on loopback.

The receiver is :class:`~tests.e2e.ssf_receiver.Receiver`; delivery (polled SETs) is tested in
``test_ssf_delivery.py``.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import SSF_ISSUER, Server
from tests.e2e.ssf_receiver import POLL, PUSH, Receiver
from tests.e2e.test_http_api import Client, run

BEARER = 'Bearer realm="mission-ledger"'
INVALID_TOKEN = 'Bearer realm="mission-ledger", error="invalid_token"'
INSUFFICIENT_SCOPE = 'Bearer realm="mission-ledger", error="insufficient_scope"'
UNKNOWN_STREAM = "0" * 32
TRANSMITTER_VALUES = {
    "iss": "https://elsewhere.example.com",
    "aud": "https://crm.example.com",
    "events_supported": [],
    "events_delivered": ["urn:example:not-delivered"],
    "min_verification_interval": 1,
}


async def _receiver(c: Client, principal: str = "receiver") -> Receiver:
    receiver = Receiver(c, principal, SSF_ISSUER)
    await receiver.discover()
    return receiver


# -- discovery ------------------------------------------------------------------------------------


def test_discovery_metadata_is_public_and_names_every_endpoint(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        receiver = await _receiver(c)
        metadata = receiver.metadata
        base = SSF_ISSUER
        assert metadata == {
            "spec_version": "1_0",
            "issuer": SSF_ISSUER,
            "jwks_uri": base + "/jwks.json",
            "delivery_methods_supported": [PUSH, POLL],
            "configuration_endpoint": base + "/ssf/stream",
            "status_endpoint": base + "/ssf/status",
            "add_subject_endpoint": base + "/ssf/subjects:add",
            "remove_subject_endpoint": base + "/ssf/subjects:remove",
            "verification_endpoint": base + "/ssf/verify",
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "default_subjects": "ALL",
        }
        assert all(value != [] for value in metadata.values())  # SSF §7.1: no empty arrays
        # RFC 8615 inserted form (the issuer has a path) and the form a path-stripping proxy
        # forwards: the same document, public, cacheable.
        for path in ("/.well-known/ssf-configuration/tenant-a", "/.well-known/ssf-configuration"):
            reply = await c.get(path)
            assert reply.ok() == metadata
            assert reply.headers["Content-Type"].startswith("application/json")
            assert "max-age" in reply.headers["Cache-Control"]
        assert sorted(k["alg"] for k in receiver.jwks["keys"]) == ["ES256", "RS256"]
        document = (await c.get("/openapi.json")).ok()
        for path in ("/ssf/stream", "/ssf/poll/{stream_id}", "/.well-known/ssf-configuration"):
            assert path in document["paths"], path

    run(ssf_server, scenario)


# -- stream configuration ------------------------------------------------------------------------


def test_create_read_list_and_delete(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        fresh = await _receiver(c, "fresh_receiver")
        listed = await fresh.call("GET", fresh.endpoint("configuration_endpoint"))
        assert listed.ok() == []  # an array even when empty (SSF §8.1.1.2)
        assert listed.headers["Cache-Control"] == "no-store"

        reply = await fresh.call("POST", fresh.endpoint("configuration_endpoint"), {})
        config = reply.ok(201)
        sid = config["stream_id"]
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.headers["Cache-Control"] == "no-store"
        assert reply.headers["Location"] == f"/ssf/stream?stream_id={sid}"
        assert len(sid) == 32
        assert config["iss"] == SSF_ISSUER
        assert config["aud"] == "https://archive.example.com"  # the registered audience
        assert config["delivery"] == {
            "method": POLL,
            "endpoint_url": f"{SSF_ISSUER}/ssf/poll/{sid}",
        }  # no delivery → poll at a transmitter-assigned, per-stream URL
        assert config["events_delivered"] == []  # nothing requested, nothing delivered
        assert config["events_supported"]
        assert config["set_signing_alg"] == "RS256"
        assert config["min_verification_interval"] == 30

        fresh.streams[sid] = config
        second = await fresh.create({"description": "second"})
        assert second["stream_id"] != sid  # several streams per receiver
        assert second["delivery"]["endpoint_url"] != config["delivery"]["endpoint_url"]

        one = await fresh.call(
            "GET", fresh.endpoint("configuration_endpoint") + f"?stream_id={sid}"
        )
        assert one.ok() == config
        both = (await fresh.call("GET", fresh.endpoint("configuration_endpoint"))).ok()
        assert sorted(s["stream_id"] for s in both) == sorted([sid, second["stream_id"]])

        url = fresh.endpoint("configuration_endpoint")
        deleted = await fresh.call("DELETE", url + f"?stream_id={sid}")
        assert deleted.status == 204, deleted.text
        assert deleted.text == ""
        assert deleted.headers["Cache-Control"] == "no-store"
        (await fresh.call("GET", url + f"?stream_id={sid}")).problem(404, "not_found")
        (await fresh.call("DELETE", url + f"?stream_id={sid}")).problem(404, "not_found")
        (await fresh.poll(sid, returnImmediately=True)).problem(404, "not_found")
        (await fresh.call("DELETE", url)).problem(400, "invalid_request")  # stream_id required
        remaining = (await fresh.call("GET", url)).ok()
        assert [s["stream_id"] for s in remaining] == [second["stream_id"]]
        assert (await fresh.call("DELETE", url + f"?stream_id={second['stream_id']}")).status == 204
        assert (await fresh.call("GET", url)).ok() == []

    run(ssf_server, scenario)


def test_create_requests_events_and_extensions(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        receiver = await _receiver(c)
        supported = (await receiver.create())["events_supported"]
        requested = [supported[2], "urn:example:unknown", supported[0]]
        config = await receiver.create(
            {
                "events_requested": requested,
                "description": "ERP revocations",
                "mission_capabilities_supported": ["authority_changed", "something_else"],
                "set_signing_alg": "ES256",
                "stream_id": "ignored",  # transmitter-supplied members are ignored on create
                "iss": "https://ignored.example.com",
            }
        )
        assert config["events_requested"] == requested
        assert config["events_delivered"] == [supported[2], supported[0]]  # requested order
        assert config["mission_capabilities_supported"] == ["authority_changed"]
        assert config["set_signing_alg"] == "ES256"
        assert config["iss"] == SSF_ISSUER
        assert config["stream_id"] != "ignored"

        url = receiver.endpoint("configuration_endpoint")
        # A public IP literal: serve resolves push host names at registration (SSRF guard), and
        # example.com names do not resolve. Nothing is pushed to it (no events requested).
        push = await receiver.call(
            "POST",
            url,
            {
                "delivery": {
                    "method": PUSH,
                    "endpoint_url": "https://93.184.215.14/ssf/events",
                    "authorization_header": "Bearer push-secret",
                }
            },
        )
        pushed = push.ok(201)
        assert pushed["delivery"] == {
            "method": PUSH,
            "endpoint_url": "https://93.184.215.14/ssf/events",
        }  # the authorization_header is a secret: never returned
        assert "push-secret" not in push.text
        # A push stream has no poll endpoint: its id on the poll path is a 404.
        (await receiver.call("POST", f"/ssf/poll/{pushed['stream_id']}", {})).problem(
            404, "not_found"
        )
        assert (
            await receiver.call("DELETE", url + f"?stream_id={pushed['stream_id']}")
        ).status == 204

        for body, field in (
            ({"delivery": {"method": "urn:example:carrier-pigeon"}}, "delivery.method"),
            ({"delivery": {"method": PUSH}}, "delivery.endpoint_url"),
            ({"delivery": "poll"}, "delivery"),
            ({"events_requested": "all"}, "events_requested"),
            ({"set_signing_alg": "HS256"}, "set_signing_alg"),
            ({"description": 7}, "description"),
        ):
            problem = (await receiver.call("POST", url, body)).problem(400, "invalid_request")
            assert problem["field"] == field, (body, problem)
        (await receiver.call("POST", url, [1])).problem(400, "invalid_request")
        broken = await receiver.client.call(
            "POST",
            receiver.path(url),
            as_="receiver",
            data="{not json",
            headers={"Content-Type": "application/json"},
        )
        broken.problem(400, "invalid_json")
        text = await receiver.client.call(
            "POST",
            receiver.path(url),
            as_="receiver",
            data="{}",
            headers={"Content-Type": "text/plain"},
        )
        text.problem(415, "unsupported_media_type")

    run(ssf_server, scenario)


def test_patch_and_put_follow_the_ssf_rules(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        receiver = await _receiver(c)
        url = receiver.endpoint("configuration_endpoint")
        supported = (await receiver.create())["events_supported"]
        config = await receiver.create(
            {
                "events_requested": supported[:2],
                "description": "before",
                "mission_capabilities_supported": ["authority_changed"],
            }
        )
        sid = config["stream_id"]
        poll_url = config["delivery"]["endpoint_url"]

        # PATCH: present receiver-supplied members change, absent ones stay.
        patched = (
            await receiver.call("PATCH", url, {"stream_id": sid, "description": "after"})
        ).ok()
        assert patched == {**config, "description": "after"}
        # Transmitter-supplied members may be sent only with their current values.
        same = {member: config[member] for member in TRANSMITTER_VALUES if member in config}
        again = await receiver.call("PATCH", url, {"stream_id": sid, **same, "description": "x"})
        assert again.ok()["description"] == "x"
        for member, value in TRANSMITTER_VALUES.items():
            for method in ("PATCH", "PUT"):
                reply = await receiver.call(method, url, {"stream_id": sid, member: value})
                assert reply.problem(400, "invalid_request")["field"] == member, (method, member)
        for method in ("PATCH", "PUT"):
            missing = await receiver.call(method, url, {"description": "no id"})
            assert missing.problem(400, "invalid_request")["field"] == "stream_id"
            unknown = await receiver.call(method, url, {"stream_id": UNKNOWN_STREAM})
            unknown.problem(404, "not_found")
            wrong_url = await receiver.call(
                method,
                url,
                {"stream_id": sid, "delivery": {"method": POLL, "endpoint_url": poll_url + "x"}},
            )
            assert wrong_url.problem(400, "invalid_request")["field"] == "delivery.endpoint_url"
            (
                await receiver.call(
                    method, url, None, data="[", headers={"Content-Type": "application/json"}
                )
            ).problem(400, "invalid_json")

        # {"method": poll} (what conformance clients send) keeps the assigned URL.
        kept = await receiver.call("PATCH", url, {"stream_id": sid, "delivery": {"method": POLL}})
        assert kept.ok()["delivery"] == {"method": POLL, "endpoint_url": poll_url}
        events = supported[1:3]
        replaced = await receiver.call(
            "PUT",
            url,
            {"stream_id": sid, "delivery": {"method": POLL}, "events_requested": events},
        )
        body = replaced.ok()
        assert replaced.headers["Cache-Control"] == "no-store"
        # PUT removes the receiver-supplied members it does not carry.
        assert "description" not in body
        assert "mission_capabilities_supported" not in body
        assert body["events_requested"] == events
        assert body["events_delivered"] == events
        assert body["delivery"] == {"method": POLL, "endpoint_url": poll_url}
        bare = (await receiver.call("PUT", url, {"stream_id": sid})).ok()
        assert "events_requested" not in bare
        assert bare["events_delivered"] == []
        assert bare["delivery"] == {"method": POLL, "endpoint_url": poll_url}  # reset to poll
        read = await receiver.call("GET", url + f"?stream_id={sid}")
        assert read.ok() == bare

    run(ssf_server, scenario)


# -- status, subjects, verification ---------------------------------------------------------------


def test_status_subjects_and_verification_requests(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        receiver = await _receiver(c)
        sid = (await receiver.create())["stream_id"]
        status_url = receiver.endpoint("status_endpoint")
        read = await receiver.call("GET", status_url + f"?stream_id={sid}")
        assert read.ok() == {"stream_id": sid, "status": "enabled"}
        assert read.headers["Cache-Control"] == "no-store"
        paused = await receiver.call(
            "POST",
            status_url + f"?stream_id={sid}",  # tolerated: the body decides
            {"stream_id": sid, "status": "paused", "reason": "maintenance"},
        )
        assert paused.ok() == {"stream_id": sid, "status": "paused", "reason": "maintenance"}
        assert (await receiver.call("GET", status_url + f"?stream_id={sid}")).ok()[
            "status"
        ] == "paused"
        enabled = await receiver.call("POST", status_url, {"stream_id": sid, "status": "enabled"})
        assert enabled.ok() == {"stream_id": sid, "status": "enabled"}
        bad = await receiver.call("POST", status_url, {"stream_id": sid, "status": "sleeping"})
        assert bad.problem(400, "invalid_request")["field"] == "status"
        (await receiver.call("GET", status_url)).problem(400, "invalid_request")
        (await receiver.call("GET", status_url + f"?stream_id={UNKNOWN_STREAM}")).problem(
            404, "not_found"
        )
        (await receiver.call("GET", status_url + "?stream_id=not-a-stream")).problem(
            404, "not_found"
        )
        (
            await receiver.call(
                "POST", status_url, {"stream_id": UNKNOWN_STREAM, "status": "paused"}
            )
        ).problem(404, "not_found")

        add, remove = (
            receiver.endpoint("add_subject_endpoint"),
            receiver.endpoint("remove_subject_endpoint"),
        )
        subject = {"format": "opaque", "id": "b1f1c7f2-8a57-4c1e-9e8c-1d7b9d3f0a11"}
        added = await receiver.call(
            "POST", add, {"stream_id": sid, "subject": subject, "verified": True}
        )
        assert added.status == 200, added.text
        assert added.text == ""  # SSF §8.1.3.2: 200 with an empty body
        assert added.headers["Cache-Control"] == "no-store"
        removed = await receiver.call("POST", remove, {"stream_id": sid, "subject": subject})
        assert removed.status == 204, removed.text
        assert removed.text == ""
        complex_subject = {
            "format": "complex",
            "session": {"format": "opaque", "id": "b1f1c7f2-8a57-4c1e-9e8c-1d7b9d3f0a11"},
        }
        assert (
            await receiver.call("POST", remove, {"stream_id": sid, "subject": complex_subject})
        ).status == 204
        for url, body, field in (
            (add, {"stream_id": sid}, "subject"),
            (add, {"stream_id": sid, "subject": {"format": "opaque"}}, "subject.id"),
            (add, {"stream_id": sid, "subject": subject, "verified": "yes"}, "verified"),
            (remove, {"subject": subject}, "stream_id"),
            (remove, {"stream_id": sid, "subject": {"format": "carrier-pigeon"}}, "subject"),
        ):
            assert (await receiver.call("POST", url, body)).problem(400, "invalid_request")[
                "field"
            ] == field
        for url in (add, remove):
            (
                await receiver.call("POST", url, {"stream_id": UNKNOWN_STREAM, "subject": subject})
            ).problem(404, "not_found")

        verify = receiver.endpoint("verification_endpoint")
        first = await receiver.call("POST", verify, {"stream_id": sid, "state": "s-1"})
        assert first.status == 204, first.text
        assert first.text == ""
        too_soon = await receiver.call("POST", verify, {"stream_id": sid})
        too_soon.problem(429, "too_many_requests")
        assert 1 <= int(too_soon.headers["Retry-After"]) <= 30
        (await receiver.call("POST", verify, {"stream_id": sid, "state": 5})).problem(
            400, "invalid_request"
        )
        (await receiver.call("POST", verify, {"stream_id": UNKNOWN_STREAM})).problem(
            404, "not_found"
        )
        (await receiver.call("POST", verify, {})).problem(400, "invalid_request")

    run(ssf_server, scenario)


# -- authentication and authorization -------------------------------------------------------------


def _calls(sid: str) -> list[tuple[str, str, Any]]:
    """Every SSF endpoint, with a body that would be valid for stream ``sid``."""
    return [
        ("POST", "/ssf/stream", {}),
        ("GET", f"/ssf/stream?stream_id={sid}", None),
        ("PATCH", "/ssf/stream", {"stream_id": sid, "description": "x"}),
        ("PUT", "/ssf/stream", {"stream_id": sid}),
        ("DELETE", f"/ssf/stream?stream_id={sid}", None),
        ("GET", f"/ssf/status?stream_id={sid}", None),
        ("POST", "/ssf/status", {"stream_id": sid, "status": "paused"}),
        (
            "POST",
            "/ssf/subjects:add",
            {"stream_id": sid, "subject": {"format": "opaque", "id": "m"}},
        ),
        (
            "POST",
            "/ssf/subjects:remove",
            {"stream_id": sid, "subject": {"format": "opaque", "id": "m"}},
        ),
        ("POST", "/ssf/verify", {"stream_id": sid}),
        ("POST", f"/ssf/poll/{sid}", {"returnImmediately": True}),
    ]


def test_rfc6750_challenges_and_identical_404_for_foreign_streams(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        receiver = await _receiver(c)
        sid = (await receiver.create())["stream_id"]
        token = ssf_server.tokens["receiver"]
        for (method, path, body), (_, unknown_path, unknown_body) in zip(
            _calls(sid), _calls(UNKNOWN_STREAM), strict=True
        ):
            sent = {} if body is None else {"body": body}
            missing = await c.call(method, path, **sent)
            missing.problem(401, "unauthorized")
            assert missing.headers["WWW-Authenticate"] == BEARER, (method, path)  # no error
            bad = await c.call(method, path, headers={"Authorization": "Bearer mlt_nope"}, **sent)
            bad.problem(401, "unauthorized")
            assert bad.headers["WWW-Authenticate"] == INVALID_TOKEN, (method, path)
            joiner = "&" if "?" in path else "?"
            in_query = await c.call(method, f"{path}{joiner}access_token={token}", **sent)
            in_query.problem(401, "unauthorized")  # never accepted from the URI (RFC 6750 §2.3)
            assert "error=" in in_query.headers["WWW-Authenticate"]
            for role in ("operator", "harness", "approver"):
                forbidden = await c.call(method, path, as_=role, **sent)
                forbidden.problem(403, "forbidden")
                assert forbidden.headers["WWW-Authenticate"] == INSUFFICIENT_SCOPE, (role, path)
            if method == "POST" and path == "/ssf/stream":
                continue
            foreign = await c.call(method, path, as_="foreign_receiver", **sent)
            unknown_sent = {} if unknown_body is None else {"body": unknown_body}
            unknown = await c.call(method, unknown_path, as_="foreign_receiver", **unknown_sent)
            foreign.problem(404, "not_found")
            unknown.problem(404, "not_found")
            assert foreign.body["detail"] == unknown.body["detail"], path  # indistinguishable
        # The stream survived every foreign attempt, unchanged.
        read = await receiver.call("GET", f"/ssf/stream?stream_id={sid}")
        assert read.ok()["stream_id"] == sid
        status = await receiver.call("GET", f"/ssf/status?stream_id={sid}")
        assert status.ok()["status"] == "enabled"
        listed = (await c.call("GET", "/ssf/stream", as_="foreign_receiver")).ok()
        assert sid not in {s["stream_id"] for s in listed}

    run(ssf_server, scenario)
