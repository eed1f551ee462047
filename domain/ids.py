"""Identifiers: UUIDv7 (time-ordered) built from a timestamp and random bytes passed in."""

import uuid

from domain.limits import ID_RE


def uuid7(unix_ms: int, rand: bytes) -> uuid.UUID:
    """RFC 9562 UUID version 7 from a millisecond timestamp and 10 random bytes."""
    assert 0 <= unix_ms < 1 << 48
    assert len(rand) == 10
    value = (unix_ms << 80) | int.from_bytes(rand, "big")
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version 7
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 9562 variant
    result = uuid.UUID(int=value)
    assert result.version == 7
    return result


def valid_id(value: str) -> bool:
    """Program and member ids: 1..128 characters of a URL- and log-safe alphabet."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None
