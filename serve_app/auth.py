"""Bearer API keys. Only SHA-256 hashes are stored; a replica caches verdicts briefly."""

import hashlib
import secrets
import time

KEY_PREFIX = "pts_"
KEY_CACHE_TTL_S = 30.0
KEY_CACHE_MAX = 10_000
KEY_LENGTH_MAX = 256


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCache:
    """key hash -> (role or None, expiry); a revoked key stops working within the TTL."""

    def __init__(self, ttl_s: float = KEY_CACHE_TTL_S, size_max: int = KEY_CACHE_MAX) -> None:
        self._ttl_s = ttl_s
        self._size_max = size_max
        self._entries: dict[str, tuple[str | None, float]] = {}

    def get(self, key_hash: str, now: float | None = None) -> tuple[bool, str | None]:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < (now if now is not None else time.monotonic()):
            return False, None
        return True, entry[0]

    def put(self, key_hash: str, role: str | None, now: float | None = None) -> None:
        if len(self._entries) >= self._size_max:
            self._entries.clear()
        self._entries[key_hash] = (
            role,
            (now if now is not None else time.monotonic()) + self._ttl_s,
        )
