"""Idempotency: a key scoped to (program, member) moves points at most once.

The request hash is computed over a canonical form of the operation so that the same body
sent twice (whatever its key order or whitespace) hashes the same, and any different body
hashes differently.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from domain.errors import Code, PointsError


def request_hash(operation: str, fields: Mapping[str, Any]) -> str:
    """Canonical SHA-256 of an operation name and its (JSON-serialisable) fields."""
    assert operation
    canonical = json.dumps(
        {"op": operation, **fields}, sort_keys=True, separators=(",", ":"), default=str
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    assert len(digest) == 64
    return digest


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What a key answered the first time: its result code and body, replayed verbatim.

    A code, never an HTTP status: the HTTP layer decides the status of a replay exactly as
    it decides the status of the first answer. For a refusal the body is the problem's
    `detail` (and any extra fields), without the code."""

    request_hash: str
    code: Code
    body: dict[str, Any]


def replay(stored: StoredResponse, incoming_hash: str) -> StoredResponse:
    """The stored answer for a replay, or an idempotency conflict for a different body."""
    assert len(incoming_hash) == 64
    if stored.request_hash != incoming_hash:
        raise PointsError(
            Code.IDEMPOTENCY_CONFLICT,
            "this Idempotency-Key was already used with a different request body",
        )
    assert isinstance(stored.code, Code)
    return stored
