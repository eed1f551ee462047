"""What a shard repository's group commit raises besides a database error.

Every one of them means the whole batch rolled back. `FencedError`: the shard's view of a
row was stale (another owner committed first), so it reloads. The `AlreadyRecorded` kinds:
keys the batch claimed were taken by an earlier commit; they carry those keys so that the
shard answers them from the database and runs the rest of the batch again.
"""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

import psycopg

K = TypeVar("K", bound=tuple[str, ...])

IdemKey = tuple[str, str, str]  # (program_id, member_id, key)
EventKey = tuple[str, str]  # (program_id, event_id)


def unreachable(exc: BaseException) -> bool:
    """Did this fail because the database could not be reached or dropped the connection
    (a restart, a crash, an outage, a statement cut off), rather than because it refused
    something on purpose? Connection failures, `the database system is starting up`,
    `terminating connection due to administrator command` and statement timeouts are all
    OperationalError; a connection used after it closed is InterfaceError."""
    if isinstance(exc, FencedError | AlreadyRecorded):
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class FencedError(Exception):
    """Another owner committed first: this shard's view of an account is stale."""


class AlreadyRecorded(Exception, Generic[K]):
    """Keys a batch claimed (an insert that skips conflicts) are already in the database."""

    what: ClassVar[str] = "keys already recorded"

    def __init__(self, keys: list[K]) -> None:
        assert keys, "raised only for keys actually taken"
        super().__init__(f"{len(keys)} {self.what}")
        self.keys = keys


class KeysExist(AlreadyRecorded[IdemKey]):
    """Idempotency keys of the batch are already in the database (committed earlier)."""

    what = "idempotency keys already committed"


class EventsTaken(AlreadyRecorded[EventKey]):
    """Event ids of the batch are already recorded (for another member: same program)."""

    what = "event ids already recorded"


class RedemptionKeysExist(AlreadyRecorded[IdemKey]):
    """Redemption keys of the batch are already used (by another reward's redemption)."""

    what = "redemption keys already used"
