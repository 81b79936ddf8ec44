"""The SSF stream service on every backend: SSF §8 rules, ownership, and nothing half-written.

The HTTP surface is tested end to end in ``tests/e2e``; here the rules themselves run against
memory, SQLite and PostgreSQL ledgers (the same suite on each).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from mission_ledger.bootstrap import open_ledger
from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.errors import Forbidden, InvalidInput, NotFound, TooManyRequests
from mission_ledger.domain.stream import POLL, PUSH, Stream
from mission_ledger.ledger import MissionLedger
from mission_ledger.principals import Principal, PrincipalRegistry
from mission_ledger.ssf.mission_events import (
    CAEP_SESSION_REVOKED,
    LIFECYCLE_CHANGE,
    MISSION_REVOKED,
    PROPOSAL_SUBMITTED,
)
from mission_ledger.ssf.streams import (
    STREAM_UPDATED,
    StreamService,
    authorization_fingerprint,
    events_supported,
    ssf_configuration,
    well_known_paths,
)
from tests.integration.contract_fixtures import T0
from tests.pgtarget import PgTarget

ERP_AUD = "https://erp.example.com"
UNKNOWN = "urn:example:secevent:events:type_4"


@dataclass
class World:
    ledger: MissionLedger
    clock: FixedClock
    service: StreamService
    erp: Principal
    siem: Principal
    operator: Principal
    secrets: dict[str, str | None] = field(default_factory=dict)

    def position(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[World]:
    if request.param == "memory":
        settings = Settings(database_url="memory:")
    elif request.param == "sqlite":
        settings = Settings(data_dir=tmp_path / "data")
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        settings = Settings(database_url=target.ledger_url, postgres_pool_size=2)
    clock = FixedClock(T0)
    ledger = open_ledger(settings, clock=clock)
    try:
        registry = PrincipalRegistry(ledger)
        erp, _ = registry.create(
            role="receiver",
            name="erp",
            actor="operator:olga",
            audience=ERP_AUD,
            resources=[ERP_AUD + "/"],
        )
        siem, _ = registry.create(
            role="receiver", name="siem", actor="operator:olga", audience="siem", all_missions=True
        )
        operator, _ = registry.create(role="operator", name="olga", actor="operator:olga")
        secrets: dict[str, str | None] = {}
        service = StreamService(
            ledger, secret_sink=secrets.__setitem__, min_verification_interval=30
        )
        yield World(ledger, clock, service, erp, siem, operator, secrets)
    finally:
        ledger.close()


def refused(world: World, error: type[Exception], call: Any) -> Any:
    """Run ``call``, expect ``error``, and check nothing was written."""
    before = world.position()
    with pytest.raises(error) as caught:
        call()
    assert world.position() == before, "a refused request wrote to the ledger"
    return caught.value


def test_metadata_follows_ssf_7() -> None:
    metadata = ssf_configuration("https://authority.example.com")
    assert metadata["spec_version"] == "1_0"
    assert metadata["issuer"] == "https://authority.example.com"
    assert metadata["jwks_uri"] == "https://authority.example.com/jwks.json"
    assert metadata["delivery_methods_supported"] == ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"]
    assert metadata["authorization_schemes"] == [{"spec_urn": "urn:ietf:rfc:6749"}]
    assert metadata["default_subjects"] == "ALL"
    for endpoint in (
        "configuration_endpoint",
        "status_endpoint",
        "add_subject_endpoint",
        "remove_subject_endpoint",
        "verification_endpoint",
    ):
        assert metadata[endpoint].startswith("https://authority.example.com/ssf/")
    assert all(value != [] for value in metadata.values()), "empty arrays must be omitted"
    assert ssf_configuration("https://a.example/")["issuer"] == "https://a.example/"
    assert ssf_configuration("https://a.example/")["jwks_uri"] == "https://a.example/jwks.json"


def test_well_known_path_is_inserted_before_the_issuer_path() -> None:
    assert well_known_paths("https://tr.example.com") == ("/.well-known/ssf-configuration",)
    assert well_known_paths("https://tr.example.com/") == ("/.well-known/ssf-configuration",)
    assert well_known_paths("https://tr.example.com/issuer1")[0] == (
        "/.well-known/ssf-configuration/issuer1"
    )


def test_create_defaults_to_poll_and_intersects_requested_with_supported(world: World) -> None:
    config = world.service.create(
        world.erp,
        {
            "events_requested": [
                MISSION_REVOKED,
                UNKNOWN,
                CAEP_SESSION_REVOKED,
                PROPOSAL_SUBMITTED,
            ],
            "description": "ERP",
        },
    )
    assert config["iss"] == world.ledger.issuer
    assert config["aud"] == ERP_AUD
    assert config["delivery"] == {
        "method": POLL,
        "endpoint_url": world.service.poll_url(config["stream_id"]),
    }
    # unknown ignored; proposals are not supported for a resource-scoped receiver
    assert config["events_delivered"] == [MISSION_REVOKED, CAEP_SESSION_REVOKED]
    assert PROPOSAL_SUBMITTED not in config["events_supported"]
    assert config["events_requested"][1] == UNKNOWN
    assert config["set_signing_alg"] == "RS256"
    assert config["min_verification_interval"] == 30
    stream = world.service.stream(config["stream_id"])
    assert (stream.status, stream.receiver_name, stream.resources) == (
        "enabled",
        "erp",
        [ERP_AUD + "/"],
    )


def test_all_missions_receivers_may_get_proposal_events(world: World) -> None:
    assert PROPOSAL_SUBMITTED in events_supported(True)
    config = world.service.create(world.siem, {"events_requested": [PROPOSAL_SUBMITTED]})
    assert config["events_delivered"] == [PROPOSAL_SUBMITTED]


def test_each_stream_gets_its_own_poll_url(world: World) -> None:
    first = world.service.create(world.erp, {})
    second = world.service.create(world.erp, {})
    assert first["stream_id"] != second["stream_id"]
    assert first["delivery"]["endpoint_url"] != second["delivery"]["endpoint_url"]
    assert {c["stream_id"] for c in world.service.read(world.erp, None)} == {  # type: ignore[union-attr]
        first["stream_id"],
        second["stream_id"],
    }


def test_read_lists_only_own_streams_and_foreign_ids_are_404(world: World) -> None:
    assert world.service.read(world.erp, None) == []
    mine = world.service.create(world.erp, {})["stream_id"]
    theirs = world.service.create(world.siem, {})["stream_id"]
    assert [c["stream_id"] for c in world.service.read(world.erp, None)] == [mine]  # type: ignore[index]
    for stream_id in (theirs, "0" * 32, "not-a-stream", mine.upper()):
        with pytest.raises(NotFound) as error:
            world.service.read(world.erp, stream_id)
        assert error.value.description == "no such stream"
        with pytest.raises(NotFound):
            world.service.status(world.erp, stream_id)
        refused(
            world, NotFound, lambda s=stream_id: world.service.verify(world.erp, {"stream_id": s})
        )
        refused(
            world,
            NotFound,
            lambda s=stream_id: world.service.set_status(
                world.erp, {"stream_id": s, "status": "paused"}
            ),
        )


def test_only_receivers_manage_streams(world: World) -> None:
    refused(world, Forbidden, lambda: world.service.create(world.operator, {}))
    with pytest.raises(Forbidden):
        world.service.read(world.operator, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], None),
        ({"delivery": {"method": "urn:example:carrier-pigeon"}}, "delivery.method"),
        ({"delivery": "poll"}, "delivery"),
        ({"delivery": {"method": PUSH}}, "delivery.endpoint_url"),
        (
            {"delivery": {"method": PUSH, "endpoint_url": "ftp://r.example/x"}},
            "delivery.endpoint_url",
        ),
        (
            {"delivery": {"method": PUSH, "endpoint_url": "https://u:p@r.example/x"}},
            "delivery.endpoint_url",
        ),
        (
            {"delivery": {"method": POLL, "endpoint_url": "https://r.example/mine"}},
            "delivery.endpoint_url",
        ),
        ({"events_requested": "urn:a"}, "events_requested"),
        ({"description": 7}, "description"),
        ({"set_signing_alg": "HS256"}, "set_signing_alg"),
        ({"mission_capabilities_supported": "authority_changed"}, "mission_capabilities_supported"),
    ],
)
def test_bad_create_bodies_are_400_naming_the_field(
    world: World, body: Any, field: str | None
) -> None:
    error = refused(world, InvalidInput, lambda: world.service.create(world.erp, body))
    assert error.field == field


def test_push_secret_goes_to_the_sink_and_only_its_fingerprint_to_the_ledger(world: World) -> None:
    config = world.service.create(
        world.erp,
        {
            "delivery": {
                "method": PUSH,
                "endpoint_url": "https://erp.example.com/ssf/events",
                "authorization_header": "Bearer s3cret",
            }
        },
    )
    stream_id = config["stream_id"]
    assert "authorization_header" not in config["delivery"]
    assert world.secrets[stream_id] == "Bearer s3cret"
    stream = world.service.stream(stream_id)
    assert stream.authorization_fingerprint == authorization_fingerprint("Bearer s3cret")
    stored = [vars(e) for e in world.ledger.events.get(stream.id)]
    assert "s3cret" not in repr(stored)
    world.service.delete(world.erp, stream_id)
    assert world.secrets[stream_id] is None


def test_patch_updates_present_members_and_checks_transmitter_ones(world: World) -> None:
    config = world.service.create(
        world.erp, {"events_requested": [MISSION_REVOKED], "description": "one"}
    )
    stream_id = config["stream_id"]
    patched = world.service.update(
        world.erp,
        {
            **config,  # echoing every transmitter-supplied value is allowed
            "events_requested": [MISSION_REVOKED, LIFECYCLE_CHANGE],
            "delivery": {"method": POLL},  # the conformance suite's shape keeps the URL
        },
        replace=False,
    )
    assert patched["events_delivered"] == [MISSION_REVOKED, LIFECYCLE_CHANGE]
    assert patched["description"] == "one"
    assert patched["delivery"] == config["delivery"]
    assert world.service.update(world.erp, {"stream_id": stream_id}, replace=False) == patched
    for member, value in (
        ("iss", "https://evil.example"),
        ("aud", "https://other.example"),
        ("events_delivered", [MISSION_REVOKED]),  # must equal the value before the update
        ("events_supported", []),
        ("min_verification_interval", 1),
    ):
        error = refused(
            world,
            InvalidInput,
            lambda m=member, v=value: world.service.update(
                world.erp, {"stream_id": stream_id, m: v}, replace=False
            ),
        )
        assert error.field == member
    error = refused(
        world,
        InvalidInput,
        lambda: world.service.update(world.erp, {"description": "x"}, replace=False),
    )
    assert error.field == "stream_id"
    refused(
        world,
        NotFound,
        lambda: world.service.update(world.siem, {"stream_id": stream_id}, replace=False),
    )


def test_put_removes_absent_receiver_members_and_resets_delivery_to_poll(world: World) -> None:
    config = world.service.create(
        world.erp,
        {
            "events_requested": [MISSION_REVOKED],
            "description": "one",
            "set_signing_alg": "ES256",
            "mission_capabilities_supported": ["authority_changed"],
            "delivery": {"method": PUSH, "endpoint_url": "https://erp.example.com/ev"},
        },
    )
    replaced = world.service.update(world.erp, {"stream_id": config["stream_id"]}, replace=True)
    assert "description" not in replaced
    assert "events_requested" not in replaced
    assert replaced["events_delivered"] == []
    assert replaced["set_signing_alg"] == "RS256"
    assert "mission_capabilities_supported" not in replaced
    assert replaced["delivery"] == {
        "method": POLL,
        "endpoint_url": world.service.poll_url(config["stream_id"]),
    }
    events = list(world.ledger.events.get(world.service.stream(config["stream_id"]).id))
    assert isinstance(events[-1], Stream.Configured)
    assert events[-1].operation == "replace"


def test_status_round_trip_and_receiver_changes_are_receiver_initiated(world: World) -> None:
    stream_id = world.service.create(world.erp, {})["stream_id"]
    assert world.service.status(world.erp, stream_id) == {
        "stream_id": stream_id,
        "status": "enabled",
    }
    assert world.service.set_status(
        world.erp, {"stream_id": stream_id, "status": "paused", "reason": "maintenance"}
    ) == {"stream_id": stream_id, "status": "paused", "reason": "maintenance"}
    assert world.service.status(world.erp, stream_id)["reason"] == "maintenance"
    refused(
        world,
        InvalidInput,
        lambda: world.service.set_status(world.erp, {"stream_id": stream_id, "status": "off"}),
    )
    with pytest.raises(InvalidInput):
        world.service.status(world.erp, None)
    event = list(world.ledger.events.get(world.service.stream(stream_id).id))[-1]
    assert isinstance(event, Stream.StatusChanged)
    assert event.initiator == "receiver"
    stream, changed = world.service.set_status_as_transmitter(
        stream_id, status="disabled", reason="inactivity", actor="operator:olga"
    )
    assert changed
    assert stream.status == "disabled"
    event = list(world.ledger.events.get(stream.id))[-1]
    assert event.initiator == "transmitter"
    assert STREAM_UPDATED.endswith("stream-updated")


def test_subjects_add_and_remove(world: World) -> None:
    stream_id = world.service.create(world.erp, {})["stream_id"]
    mission = {"format": "opaque", "id": "b3c2a8e0-0000-4000-8000-000000000001"}
    world.service.remove_subject(world.erp, {"stream_id": stream_id, "subject": mission})
    assert not world.service.stream(stream_id).includes([mission])
    world.service.add_subject(
        world.erp, {"stream_id": stream_id, "subject": mission, "verified": False}
    )
    assert world.service.stream(stream_id).includes([mission])
    for body, field_name in (
        ({"stream_id": stream_id}, "subject"),
        ({"stream_id": stream_id, "subject": {"format": "opaque"}}, "subject.id"),
        ({"stream_id": stream_id, "subject": mission, "verified": "yes"}, "verified"),
    ):
        error = refused(world, InvalidInput, lambda b=body: world.service.add_subject(world.erp, b))
        assert error.field == field_name


def test_verification_interval_is_enforced_with_retry_after(world: World) -> None:
    stream_id = world.service.create(world.erp, {})["stream_id"]
    world.service.verify(world.erp, {"stream_id": stream_id, "state": "abc"})
    world.clock.advance(timedelta(seconds=5))
    error = refused(
        world, TooManyRequests, lambda: world.service.verify(world.erp, {"stream_id": stream_id})
    )
    assert error.retry_after == 25
    world.clock.advance(timedelta(seconds=25))
    world.service.verify(world.erp, {"stream_id": stream_id})
    error = refused(
        world,
        InvalidInput,
        lambda: world.service.verify(world.erp, {"stream_id": stream_id, "state": 1}),
    )
    assert error.field == "state"


def test_delete_then_everything_is_404(world: World) -> None:
    stream_id = world.service.create(world.erp, {})["stream_id"]
    world.service.delete(world.erp, stream_id)
    assert world.service.read(world.erp, None) == []
    with pytest.raises(NotFound):
        world.service.read(world.erp, stream_id)
    refused(world, NotFound, lambda: world.service.delete(world.erp, stream_id))
    with pytest.raises(InvalidInput):
        world.service.delete(world.erp, None)
    assert world.service.all_streams() == []


def test_a_second_service_sees_streams_created_by_another(world: World) -> None:
    stream_id = world.service.create(world.erp, {})["stream_id"]
    other = StreamService(world.ledger)
    assert [s.stream_id for s in other.all_streams()] == [stream_id]
    assert [c["stream_id"] for c in other.read(world.erp, None)] == [stream_id]  # type: ignore[index]


def test_poll_stream_lookup_refuses_push_streams(world: World) -> None:
    push = world.service.create(
        world.erp, {"delivery": {"method": PUSH, "endpoint_url": "https://erp.example.com/ev"}}
    )
    poll = world.service.create(world.erp, {})
    assert (
        world.service.stream_for_poll(world.erp, poll["stream_id"]).stream_id == poll["stream_id"]
    )
    with pytest.raises(NotFound):
        world.service.stream_for_poll(world.erp, push["stream_id"])
    with pytest.raises(NotFound):
        world.service.stream_for_poll(world.siem, poll["stream_id"])
