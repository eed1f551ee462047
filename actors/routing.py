"""Stable mapping: account -> slot -> shard.

The slot count is fixed for the life of a deployment (changing it would move accounts);
the shard count may change between restarts, because fencing in the database makes a
moved slot safe: a stale owner can never commit.
"""

import hashlib

SLOTS = 1024
SHARD_NAME_PREFIX = "points-account-shard-"
REWARD_SHARD_NAME_PREFIX = "points-reward-shard-"
NAMESPACE = "points"


def slot_of(program_id: str, member_id: str, slots: int = SLOTS) -> int:
    """Stable across processes and Python versions (unlike hash())."""
    assert slots > 0
    digest = hashlib.blake2b(f"{program_id}\x00{member_id}".encode(), digest_size=8).digest()
    slot = int.from_bytes(digest, "big") % slots
    assert 0 <= slot < slots
    return slot


def shard_of(program_id: str, member_id: str, shards: int, slots: int = SLOTS) -> int:
    assert 0 < shards <= slots
    return slot_of(program_id, member_id, slots) % shards


def shard_name(index: int) -> str:
    return f"{SHARD_NAME_PREFIX}{index}"


def reward_shard_name(index: int) -> str:
    return f"{REWARD_SHARD_NAME_PREFIX}{index}"


def owned_slots(index: int, shards: int, slots: int = SLOTS) -> list[int]:
    """The slots shard `index` of `shards` owns (slot % shards == index)."""
    assert 0 <= index < shards <= slots
    return [slot for slot in range(slots) if slot % shards == index]
