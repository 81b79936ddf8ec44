"""Signed checkpoints: Ed25519 over every stream's head, kept outside the event store."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..domain.anchors import sha256_b64url
from ..domain.canonical import canonicalize
from ..errors import AuditError
from .report import Problem

CHECKPOINTS_FILE = "checkpoints.jsonl"
PRIVATE_KEY_FILE = "checkpoint-signing-key.pem"
PUBLIC_KEY_FILE = "checkpoint-signing-key.pub.pem"
ALG = "EdDSA"


# -- checkpoints ----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint of the Ed25519 key (``{"crv","kty","x"}``)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_b64url(canonicalize({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}))


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_public_key(audit_dir: Path) -> Ed25519PublicKey | None:
    path = audit_dir / PUBLIC_KEY_FILE
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise AuditError(f"cannot read the checkpoint public key {path}: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} is not an Ed25519 public key")
    return key


def _create_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` to ``path`` only if it does not exist (atomically); ``False`` if it did."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        return True
    finally:
        temp.unlink(missing_ok=True)


def _signing_key(audit_dir: Path) -> Ed25519PrivateKey:
    """Load the private key, creating the pair (mode 0600 / 0644) on first use."""
    try:
        audit_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise AuditError(f"cannot create the audit directory {audit_dir}: {error}") from None
    private_path = audit_dir / PRIVATE_KEY_FILE
    public_path = audit_dir / PUBLIC_KEY_FILE
    if not private_path.exists():
        if public_path.exists():
            raise AuditError(
                f"{public_path} exists but its private key {private_path} does not; restore the "
                "private key (or move both away to start a new key and checkpoint log)"
            )
        fresh = Ed25519PrivateKey.generate()
        pem = fresh.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            _create_exclusive(private_path, pem, 0o600)
        except OSError as error:
            raise AuditError(f"cannot create the signing key {private_path}: {error}") from None
    try:
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise AuditError(
            f"cannot read the checkpoint signing key {private_path}: {error}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{private_path} is not an Ed25519 private key")
    try:
        _create_exclusive(public_path, _public_pem(key.public_key()), 0o644)
    except OSError as error:
        raise AuditError(f"cannot write the public key {public_path}: {error}") from None
    public = _load_public_key(audit_dir)
    if public is None or _thumbprint(public) != _thumbprint(key.public_key()):
        raise AuditError(f"{public_path} does not belong to the signing key {private_path}")
    return key


@dataclass
class _Checkpoints:
    body: dict[str, Any] | None = None
    line: int = 0
    thumbprint: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def heads(self) -> dict[str, tuple[int, str]]:
        if self.body is None:
            return {}
        return {k: (v["version"], v["hash"]) for k, v in self.body["streams"].items()}

    def summary(self) -> dict[str, Any] | None:
        if self.body is None:
            return None
        return {
            "line": self.line,
            "issuer": self.body["issuer"],
            "created_at": self.body["created_at"],
            "position": self.body["position"],
            "stream_count": self.body["stream_count"],
            "event_count": self.body["event_count"],
            "public_key_thumbprint": self.thumbprint,
        }


def _valid_body(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    if not all(isinstance(body.get(k), str) for k in ("issuer", "created_at")):
        return False
    if not all(
        isinstance(body.get(k), int) and not isinstance(body.get(k), bool)
        for k in ("position", "stream_count", "event_count")
    ):
        return False
    streams = body.get("streams")
    return isinstance(streams, dict) and all(
        isinstance(head, dict)
        and isinstance(head.get("version"), int)
        and isinstance(head.get("hash"), str)
        for head in streams.values()
    )


def _read_checkpoints(audit_dir: Path) -> _Checkpoints:
    """Check every line's signature; keep the latest valid checkpoint."""
    result = _Checkpoints()
    path = audit_dir / CHECKPOINTS_FILE
    if not path.exists():
        return result
    public = _load_public_key(audit_dir)
    thumbprint = _thumbprint(public) if public is not None else None

    def bad(number: int, why: str) -> None:
        text = f"{CHECKPOINTS_FILE} line {number}: {why}"
        result.problems.append(Problem("bad_checkpoint_signature", "", None, None, text))

    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad(number, "not a JSON checkpoint record")
                continue
            if not isinstance(record, dict) or not isinstance(record.get("signature"), str):
                bad(number, "not a checkpoint record (no signature)")
                continue
            if public is None:
                bad(number, f"cannot be checked: the public key {PUBLIC_KEY_FILE} is missing")
                continue
            if record.get("alg") != ALG:
                bad(number, f"algorithm {record.get('alg')!r} is not {ALG}")
                continue
            if record.get("public_key_thumbprint") != thumbprint:
                bad(number, "signed by another key than the audit directory's public key")
                continue
            body = record.get("checkpoint")
            try:
                public.verify(_b64url_decode(record["signature"]), canonicalize(body))
            except (InvalidSignature, ValueError, TypeError):
                bad(number, "the signature does not match the checkpoint (edited or forged)")
                continue
            if not _valid_body(body):
                bad(number, "signed, but not a well-formed checkpoint body")
                continue
            result.body, result.line, result.thumbprint = body, number, thumbprint
    return result
