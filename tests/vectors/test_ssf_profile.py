"""The published SSF profile (``ssf/``): schemas, examples and README agree with each other."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import (  # type: ignore[import-untyped]
    Draft202012Validator,
    FormatChecker,
)

from mission_ledger.ssf import LIFECYCLE_CHANGE, NAMESPACE, PROFILE_EVENT_TYPES

SSF = Path(__file__).resolve().parents[2] / "ssf"
SCHEMAS = SSF / "schemas"
EXAMPLES = SSF / "examples"
COMPAT = {"lifecycle-change": LIFECYCLE_CHANGE}


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _names(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.json")}


def _readme_uris() -> set[str]:
    text = (SSF / "README.md").read_text(encoding="utf-8")
    return set(re.findall(re.escape(NAMESPACE) + r"[a-z0-9-]+", text))


def _uri(name: str) -> str:
    return COMPAT.get(name, NAMESPACE + name)


def test_readme_schemas_examples_and_code_name_the_same_types() -> None:
    profile = {NAMESPACE + n for n in _names(SCHEMAS) if n not in COMPAT}
    assert _readme_uris() == profile == set(PROFILE_EVENT_TYPES)
    assert _names(SCHEMAS) == _names(EXAMPLES)
    assert len(PROFILE_EVENT_TYPES) == 13
    assert LIFECYCLE_CHANGE in (SSF / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(_names(SCHEMAS)))
def test_schema_is_valid_2020_12(name: str) -> None:
    schema = _load(SCHEMAS / f"{name}.json")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    if name not in COMPAT:
        assert schema["$id"] == NAMESPACE + name


@pytest.mark.parametrize("name", sorted(_names(EXAMPLES)))
def test_example_is_a_valid_set(name: str) -> None:
    example = _load(EXAMPLES / f"{name}.json")
    header, claims = example["header"], example["claims"]
    assert header["typ"] == "secevent+jwt"
    assert header["alg"] in {"RS256", "ES256"}
    assert header["kid"]
    assert {"iss", "aud", "iat", "jti", "txn", "sub_id", "events"} <= set(claims)
    assert "sub" not in claims
    assert "exp" not in claims
    assert claims["sub_id"]["format"] == "opaque"
    assert list(claims["events"]) == [_uri(name)]  # exactly one event
    body = claims["events"][_uri(name)]
    assert "subject" not in body
    validator = Draft202012Validator(
        _load(SCHEMAS / f"{name}.json"), format_checker=FormatChecker()
    )
    errors = [e.message for e in validator.iter_errors(body)]
    assert errors == []
    subject_id = body.get("mission_id") or body.get("proposal_id") or body["mission"]["id"]
    assert claims["sub_id"]["id"] == subject_id
