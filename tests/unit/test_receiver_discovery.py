"""Discovery (SSF 1.0 §7): the well-known URL, and what a receiver refuses in the metadata."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mission_ledger.receiver import (
    DiscoveryError,
    InsecureUrl,
    IssuerMismatch,
    ReceiverError,
    TransmitterMetadata,
    discover,
    well_known_url,
)
from tests.unit.test_receiver_common import run, serve, transmitter

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ssf" / "discovery"


@pytest.mark.parametrize(
    ("issuer", "url"),
    [
        ("https://tr.example.com", "https://tr.example.com/.well-known/ssf-configuration"),
        ("https://tr.example.com/", "https://tr.example.com/.well-known/ssf-configuration"),
        (
            "https://tr.example.com/issuer1",
            "https://tr.example.com/.well-known/ssf-configuration/issuer1",
        ),
        (
            "https://tr.example.com/issuer1/",
            "https://tr.example.com/.well-known/ssf-configuration/issuer1",
        ),
        (
            "https://tr.example.com:8443/a/b",
            "https://tr.example.com:8443/.well-known/ssf-configuration/a/b",
        ),
    ],
)
def test_well_known_url_inserts_the_path_between_host_and_path(issuer: str, url: str) -> None:
    assert well_known_url(issuer) == url


def test_well_known_url_matches_the_spec_examples() -> None:
    vectors = json.loads((VECTORS / "well-known-requests.json").read_text())
    for example in vectors["examples"]:
        if example.get("legacy"):
            continue  # /.well-known/risc-configuration: new receivers do not use it
        request = example["request"]
        expected = f"https://{request['headers']['Host']}{request['target']}"
        assert well_known_url(example["issuer"]) == expected, example["id"]


@pytest.mark.parametrize(
    "issuer", ["https://tr.example.com/?tenant=1", "https://tr.example.com/#x", "tr.example.com"]
)
def test_an_issuer_with_query_fragment_or_no_scheme_is_refused(issuer: str) -> None:
    with pytest.raises(DiscoveryError):
        well_known_url(issuer)


def test_discover_returns_typed_metadata_and_keeps_extras() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.metadata["x_vendor"] = {"anything": True}
            metadata = await discover(t.issuer, session)
            assert isinstance(metadata, TransmitterMetadata)
            assert metadata.issuer == t.issuer
            assert metadata.jwks_uri == t.url + "/jwks.json"
            assert metadata.configuration_endpoint == t.url + "/ssf/stream"
            assert metadata.delivery_methods_supported == ("urn:ietf:rfc:8935", "urn:ietf:rfc:8936")
            assert metadata.authorization_schemes is not None
            assert metadata.authorization_schemes[0].spec_urn == "urn:ietf:rfc:6749"
            assert metadata.default_subjects == "ALL"
            assert metadata.supports("urn:ietf:rfc:8936")
            assert metadata.model_extra == {"x_vendor": {"anything": True}}

    run(main)


def test_discover_uses_the_inserted_path_for_an_issuer_with_a_path() -> None:
    async def main() -> None:
        seen: list[str] = []
        issuer_holder: dict[str, str] = {}

        async def metadata(request: web.Request) -> web.Response:
            seen.append(request.path)
            base = issuer_holder["base"]
            return web.json_response(
                {"issuer": base + "/tenant-a", "jwks_uri": base + "/tenant-a/jwks.json"}
            )

        app = web.Application()
        app.router.add_get("/.well-known/ssf-configuration/tenant-a", metadata)
        async with serve(app) as url, aiohttp.ClientSession() as session:
            issuer_holder["base"] = url
            result = await discover(url + "/tenant-a", session)
            assert result.issuer == url + "/tenant-a"
            assert seen == ["/.well-known/ssf-configuration/tenant-a"]

    run(main)


def _expect(
    changes: dict[str, Any], error: type[ReceiverError], match: str, *, drop: tuple[str, ...] = ()
) -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.metadata.update(changes)
            for name in drop:
                t.metadata.pop(name)
            with pytest.raises(error, match=match) as caught:
                await discover(t.issuer, session)
            assert caught.value.description

    run(main)


def test_an_issuer_that_differs_even_by_a_trailing_slash_is_refused() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.metadata["issuer"] = t.issuer + "/"
            with pytest.raises(IssuerMismatch, match="identical") as caught:
                await discover(t.issuer, session)
            assert caught.value.details == {"expected": t.issuer, "actual": t.issuer + "/"}

    run(main)


def test_missing_issuer_is_refused() -> None:
    _expect({}, DiscoveryError, "no issuer", drop=("issuer",))


def test_missing_jwks_uri_is_refused() -> None:
    _expect({}, DiscoveryError, "no jwks_uri", drop=("jwks_uri",))


def test_a_mistyped_member_is_named() -> None:
    _expect({"delivery_methods_supported": "urn:ietf:rfc:8936"}, DiscoveryError, "delivery_methods")
    _expect({"default_subjects": "SOME"}, DiscoveryError, "default_subjects")
    _expect({"jwks_uri": 42}, DiscoveryError, "jwks_uri")


def test_an_endpoint_that_is_not_https_is_refused() -> None:
    _expect(
        {"configuration_endpoint": "http://tr.example.com/ssf/stream"},
        DiscoveryError,
        "configuration_endpoint must be an https URL",
    )


def test_a_plain_http_issuer_off_loopback_is_refused_before_any_request() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(InsecureUrl, match="https"):
                await discover("http://tr.example.com", session)

    run(main)


def test_not_found_not_json_and_not_an_object_are_discovery_errors() -> None:
    async def main() -> None:
        async def not_json(request: web.Request) -> web.Response:
            return web.Response(text="<html>hello</html>", content_type="text/html")

        async def array(request: web.Request) -> web.Response:
            return web.json_response([1, 2])

        app = web.Application()
        app.router.add_get("/.well-known/ssf-configuration/html", not_json)
        app.router.add_get("/.well-known/ssf-configuration/array", array)
        async with serve(app) as url, aiohttp.ClientSession() as session:
            with pytest.raises(DiscoveryError, match="HTTP 404") as caught:
                await discover(url + "/missing", session)
            assert caught.value.details["status"] == 404
            with pytest.raises(DiscoveryError, match="not JSON"):
                await discover(url + "/html", session)
            with pytest.raises(DiscoveryError, match="not a JSON object"):
                await discover(url + "/array", session)

    run(main)


def test_an_unreachable_transmitter_is_a_discovery_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the request: nobody listens

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(DiscoveryError, match="unreachable"):
                await discover(f"http://127.0.0.1:{port}", session)

    run(main)
