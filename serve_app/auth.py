"""API keys: their format, and the replica's in-memory copy of the key table.

A key reads `pts_<id>_<secret><check>`: `id` names the key (its non-secret `prefix` is
`pts_<id>`), `secret` is 30 random base62 characters (178 bits) and `check` six base62
characters of the CRC-32 of everything before it. The checksum is verified before anything
else, so a made-up key costs a few microseconds and never a lookup; only SHA-256 hashes of
keys are stored.

Every replica holds the whole key table in memory (`KeyRing`, a few hundred bytes per key)
and polls the rows changed since its last look about once a second (`api_keys.changed_at`),
so a key created, revoked or expired anywhere takes effect on every replica within a couple
of seconds, and authenticating a request never queries the database. Keys from before 0006
(the admin key set by POINTS_ADMIN_KEY may have any form) are found by their hash in the
same table.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

KEY_PREFIX = "pts_"
KEY_LENGTH_MAX = 256
SECRET_LENGTH = 30
CHECK_LENGTH = 6
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_RE = re.compile(r"[a-z0-9]{1,32}")
_KEY_RE = re.compile(
    rf"pts_(?P<id>[a-z0-9]{{1,32}})_(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})"
    rf"(?P<check>[0-9A-Za-z]{{{CHECK_LENGTH}}})"
)
GENERATED_ID_LENGTH = 12
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    SERVICE = "service"
    VIEWER = "viewer"


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def _check(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECK_LENGTH)


def new_key_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(GENERATED_ID_LENGTH))


def new_key(key_id: str | None = None) -> str:
    """A new key (its id generated unless given)."""
    key_id = new_key_id() if key_id is None else key_id
    assert KEY_ID_RE.fullmatch(key_id), key_id
    body = f"{KEY_PREFIX}{key_id}_" + "".join(secrets.choice(BASE62) for _ in range(SECRET_LENGTH))
    return body + _check(body)


def key_prefix(key_id: str) -> str:
    """What may be shown of a key: it names the key and proves nothing."""
    return f"{KEY_PREFIX}{key_id}"


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key whose checksum holds; None for anything else (a key from
    before 0006, or a made-up one)."""
    found = _KEY_RE.fullmatch(key)
    if found is None or not hmac.compare_digest(_check(key[:-CHECK_LENGTH]), found["check"]):
        return None
    return found["id"]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One row of api_keys as a replica keeps it (never the key itself)."""

    key_id: str
    key_hash: str
    role: Role
    # None: every program.
    programs: frozenset[str] | None
    expires_at: datetime | None
    rate: tuple[int, int] | None  # (per_s, burst); None: the default from settings
    revoked: bool

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def sees(self, program_id: str) -> bool:
        return self.programs is None or program_id in self.programs


class Refusal(StrEnum):
    """Why a key was refused (the answer says only 'invalid API key' or 'expired')."""

    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"


class KeyRing:
    """The replica's copy of the key table, kept current by `apply` (rows changed since the
    last poll, revoked ones included)."""

    def __init__(self) -> None:
        self._by_id: dict[str, KeyRecord] = {}
        self._by_hash: dict[str, KeyRecord] = {}
        self.loaded = False

    def __len__(self) -> int:
        return len(self._by_id)

    def apply(self, records: Iterable[KeyRecord]) -> None:
        for record in records:
            old = self._by_id.pop(record.key_id, None)
            if old is not None:
                self._by_hash.pop(old.key_hash, None)
            if not record.revoked:
                self._by_id[record.key_id] = record
                self._by_hash[record.key_hash] = record
        self.loaded = True

    def replace(self, records: Iterable[KeyRecord]) -> None:
        """The whole table, read again: keys no longer in it are dropped."""
        self._by_id.clear()
        self._by_hash.clear()
        self.apply(records)

    def verify(self, key: str, now: datetime | None = None) -> KeyRecord | Refusal:
        """The record of a valid key, or why it is refused. Never touches the database."""
        if not key or len(key) > KEY_LENGTH_MAX:
            return Refusal.MALFORMED
        key_id = key_id_of(key)
        if key_id is not None:
            key_hash = hash_key(key)
            found_by_id = self._by_id.get(key_id)
            if found_by_id is not None and hmac.compare_digest(found_by_id.key_hash, key_hash):
                record = found_by_id
            else:
                # A key of our form installed under another id (POINTS_ADMIN_KEY set to a
                # key `points keys` printed elsewhere, say): by its hash.
                by_hash = self._by_hash.get(key_hash)
                if by_hash is None:
                    return Refusal.UNKNOWN
                record = by_hash
        else:
            # A key of another form (before 0006, or set by POINTS_ADMIN_KEY): by its hash.
            # A key of our form with a wrong checksum is made up: no lookup at all.
            if _KEY_RE.fullmatch(key) is not None:
                return Refusal.MALFORMED
            found = self._by_hash.get(hash_key(key))
            if found is None:
                return Refusal.UNKNOWN
            record = found
        if record.expired(now or datetime.now(UTC)):
            return Refusal.EXPIRED
        return record
