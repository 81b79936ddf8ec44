"""The Mission drafts' integrity-anchor test vectors (draft-mcguinness-oauth-mission, test-vectors).

Values are parsed from the drafts' compact JSON so the committed objects are exactly theirs.
"""

from __future__ import annotations

import json

import pytest

from mission_ledger.domain.anchors import (
    MISSION_AUTHORITY_SET,
    MISSION_INTENT,
    MISSION_PROPOSED_AUTHORITY,
    anchor,
)

ISS = "https://as.example.com"

INTENT_JSON = (
    '{"goal":"Reconcile Q3 invoices","resources":["https://erp.example.com"],'
    '"expires_at":"2026-12-31T23:59:59Z"}'
)
AUTHORITY_JSON = (
    '[{"type":"mission_resource_access","resource":"https://erp.example.com",'
    '"actions":["invoices.read"]},'
    '{"type":"mission_resource_access","resource":"https://erp.example.com",'
    '"actions":["journal-entries.write"],'
    '"constraints":{"max_amount":{"amount":"500.00","currency":"USD"}}}]'
)
PROPOSAL_JSON = (
    '[{"type":"mission_resource_access","resource":"https://erp.example.com",'
    '"actions":["invoices.*"]},'
    '{"type":"mission_resource_access","resource":"https://erp.example.com",'
    '"actions":["journal-entries.write"],'
    '"constraints":{"max_amount":{"amount":"1000.00","currency":"USD"}}}]'
)


@pytest.mark.parametrize(
    ("typ", "value_json", "expected"),
    [
        pytest.param(
            MISSION_INTENT,
            INTENT_JSON,
            "sha-256:6mIFoCz79uCHNzKLfBpBwqFjoFXdpmpuc65486IqimQ",
            id="intent_hash",
        ),
        pytest.param(
            MISSION_AUTHORITY_SET,
            AUTHORITY_JSON,
            "sha-256:vUCCfjGulit9u0qJ0Z6pQSNerZtXMqRlfJNCr4PzLro",
            id="authority_hash",
        ),
        pytest.param(
            MISSION_PROPOSED_AUTHORITY,
            PROPOSAL_JSON,
            "sha-256:udzftXYQy0pvYNxz4KgtmyL_EV8ry4DhIbBFfwILEBA",
            id="proposal_hash",
        ),
    ],
)
def test_draft_vector(typ: str, value_json: str, expected: str) -> None:
    assert anchor(typ, ISS, json.loads(value_json)) == expected


def test_typ_strings_are_the_drafts() -> None:
    assert MISSION_INTENT == "mission-intent"
    assert MISSION_AUTHORITY_SET == "mission-authority-set"
    assert MISSION_PROPOSED_AUTHORITY == "mission-proposed-authority"
